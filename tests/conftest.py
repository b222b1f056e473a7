# Each module before those importing it (assertions in a module imported earlier are not rewritten).
from _pytest.terminal import TerminalReporter

pytest_plugins = [
    "helpers.upstream_sm", "helpers.servers", "helpers.sm_fixtures", "helpers.otel_fixtures",
]


def pytest_terminal_summary(terminalreporter: TerminalReporter) -> None:
    """Outcomes of the real-server tests by file: CI's proof that they ran, and where they did not."""
    counts: dict[str, dict[str, int]] = {}
    for outcome in ("passed", "failed", "error", "skipped"):
        for report in terminalreporter.stats.get(outcome, []):
            if "upstream" not in getattr(report, "keywords", {}):
                continue
            by_file = counts.setdefault(report.nodeid.split("::")[0], {})
            by_file[outcome] = by_file.get(outcome, 0) + 1
    if not counts:
        return
    terminalreporter.section("real upstream state manager tests, by file")
    for path, by_outcome in sorted(counts.items()):
        outcomes = ", ".join(f"{n} {o}" for o, n in sorted(by_outcome.items()))
        terminalreporter.write_line(f"{path}: {outcomes}")
    measured = [
        line
        for report in terminalreporter.stats.get("passed", [])
        if "upstream" in getattr(report, "keywords", {}) and report.when == "call"
        for line in report.capstdout.splitlines()
        if line.strip()
    ]
    if measured:
        terminalreporter.write_line("what they printed (loads, placement, times):")
        for line in measured:
            terminalreporter.write_line(f"  {line}")
    total = {o: sum(c.get(o, 0) for c in counts.values()) for o in ("passed", "failed", "error", "skipped")}
    terminalreporter.write_line("total: " + ", ".join(f"{n} {o}" for o, n in total.items()))
