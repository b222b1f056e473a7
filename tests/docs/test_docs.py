"""docs/ against the code: every citation of a docs page and section resolves, and the names the
trace model lists are the names the code uses (both ways), so neither can drift silently."""

from __future__ import annotations

import re
from pathlib import Path
from types import ModuleType

import pytest
from opentelemetry.semconv.attributes import exception_attributes

from exo_otel import format_trace_id, run_id_for_trace
from exo_otel.core import attributes, metrics
from exo_otel.sdk import state_context
from exo_otel.server import context, spans

ROOT = Path(__file__).parents[2]
DOCS = ROOT / "docs"
TRACE_MODEL = DOCS / "trace-model.md"
# A docs page's path, optionally followed by `, section "Heading"` (the form code and tests cite).
CITATION = re.compile(r'docs/([\w-]+\.md)(?:,? sections? "([^"]+)")?')
NAME = re.compile(r"`([a-z_]+(?:\.[a-z_{}]+)+)`")


def headings(path: Path) -> list[str]:
    return [line.lstrip("#").strip() for line in path.read_text().splitlines() if line.startswith("#")]


def section(path: Path, title: str) -> str:
    """The text under a heading, up to the next heading of the same or a higher level."""
    lines = path.read_text().splitlines()
    for index, line in enumerate(lines):
        if line.startswith("#") and line.lstrip("#").strip() == title:
            level = len(line) - len(line.lstrip("#"))
            body = []
            for following in lines[index + 1 :]:
                if following.startswith("#") and len(following) - len(following.lstrip("#")) <= level:
                    break
                body.append(following)
            return "\n".join(body)
    raise AssertionError(f"{path.name} has no section {title!r}")


def first_column_names(text: str) -> set[str]:
    """Dotted names in backticks in the first cell of each table row (the header row left out)."""
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            names.update(NAME.findall(line.split("|")[1]))
    return names


def constants(*modules: ModuleType) -> set[str]:
    return {value for module in modules for value in vars(module).values() if isinstance(value, str)}


def cited_files() -> list[Path]:
    files = [ROOT / "README.md", *DOCS.glob("*.md")]
    for folder in ("src", "tests", "benchmarks"):
        files.extend(p for p in (ROOT / folder).rglob("*.py") if "egg-info" not in str(p))
    return files


def test_every_citation_names_a_page_and_section_that_exist() -> None:
    citations = []
    for path in cited_files():
        for match in CITATION.finditer(path.read_text(errors="replace")):
            citations.append((path.relative_to(ROOT), match.group(1), match.group(2)))
    assert len(citations) >= 10, citations  # the code does cite the docs
    problems = []
    for where, page, title in citations:
        if not (DOCS / page).is_file():
            problems.append(f"{where}: docs/{page} does not exist")
        elif title is not None and title not in headings(DOCS / page):
            problems.append(f'{where}: docs/{page} has no section "{title}"')
    assert not problems, problems


def test_the_index_lists_every_page() -> None:
    index = (DOCS / "README.md").read_text()
    links = set(re.findall(r"\]\(([\w-]+\.md)\)", index))
    pages = {p.name for p in DOCS.glob("*.md")} - {"README.md"}
    assert links == pages


def test_docs_hold_no_code_blocks_and_nothing_outside_the_repository() -> None:
    for page in DOCS.glob("*.md"):
        text = page.read_text()
        assert "```" not in text, f"{page.name}: a code block nothing runs (use a table or prose)"
        assert "../shared" not in text and "/work/" not in text, page.name


def test_attribute_and_event_names_are_the_codes() -> None:
    listed = first_column_names(section(TRACE_MODEL, "Attributes"))
    defined = constants(attributes, spans, exception_attributes)
    prefixes = {value for value in defined if value.endswith(".")}
    unknown = {
        name
        for name in listed
        if name not in defined
        and not any(name.startswith(prefix) for prefix in prefixes)  # exosphere.run.states.{status}
    }
    assert not unknown, f"docs/trace-model.md lists keys the code does not define: {sorted(unknown)}"
    assert {attributes.NAMESPACE, attributes.ERROR_TYPE, attributes.STATE_SCHEDULE_WAIT_MS} <= listed


def test_every_key_the_code_defines_is_in_the_trace_model() -> None:
    text = TRACE_MODEL.read_text()
    ours = {
        value
        for value in constants(attributes, spans, metrics)
        if value.startswith("exosphere.") and value not in ("exosphere.run", "exosphere.state")
    }
    missing = {value for value in ours if f"`{value}" not in text}
    assert not missing, f"keys or names the code defines and docs/trace-model.md omits: {sorted(missing)}"


def test_metric_names_are_the_codes() -> None:
    listed = first_column_names(section(TRACE_MODEL, "Metrics"))
    instruments = {value for value in constants(metrics) if value.startswith("exosphere.")}
    assert listed == instruments, sorted(listed ^ instruments)


def test_the_carriers_wire_names_are_the_codes() -> None:
    carrier = section(TRACE_MODEL, "The carrier")
    listed = set(re.findall(r"^\| `(\w+)` \|", carrier, flags=re.M))
    assert set(context.CARRIER_FIELDS) == set(state_context.CARRIER_FIELDS)
    expected = {
        *context.CARRIER_FIELDS,
        context.NODE_SPANS_FIELD,
        "run_id",
        "graph_name",
        "parents",
        "retry_count",
    }
    assert listed == expected
    assert f'`{context.NODE_SPANS_FIELD}: "{context.NODE_SPANS_SERVER}"`' in TRACE_MODEL.read_text()


@pytest.mark.parametrize(
    "row",
    re.findall(r"^\| `([0-9a-f-]{36})` \([^)]*\) \| `([0-9a-f]{32})` \|$", TRACE_MODEL.read_text(), re.M),
)
def test_the_worked_ids_are_what_the_code_computes(row: tuple[str, str]) -> None:
    run_id, trace_id = row
    assert format_trace_id(run_id) == trace_id
    assert run_id_for_trace(trace_id) == run_id


def test_the_worked_ids_are_there() -> None:
    assert len(re.findall(r"^\| `[0-9a-f-]{36}` \(version [47]\) \|", TRACE_MODEL.read_text(), re.M)) == 2
