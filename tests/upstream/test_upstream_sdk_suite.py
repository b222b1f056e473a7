"""Upstream's own python-sdk tests (exospherehost 0.0.3) give the same results with exo_otel's SDK side
loaded as without it, test by test: loaded by a pytest plugin at configure time
(tests/helpers/upstream_sdk_instrument.py) and by the ``opentelemetry-instrument`` launcher.

The tests come from ``UPSTREAM_GIT_DIR`` at tag 0.0.3, else from the PyPI sdist (which ships them):
tests/helpers/upstream_harness/source.py. They run in this venv (it has what they need: pytest,
pytest-asyncio) against the installed ``exospherehost``, from a folder of their own so that no
copy of the package beside them shadows it. Each run also loads tests/helpers/upstream_sdk_probe.py, which
says whether exo_otel was loaded in that process and how many spans it ended.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from helpers import TESTS_DIR
from helpers.upstream_harness.source import python_sdk_tests

BIN = Path(sys.executable).parent
# What an instrumented process must print no more of than a plain one (resources left open).
LEAK_MARKERS = ("Unclosed client session", "Unclosed connector", "Task was destroyed but it is pending")


def _run(mode: str, sdk: Path, out: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["EXO_OTEL_PROBE_OUT"] = str(out / f"{mode}.probe.json")
    args = [sys.executable, "-m", "pytest", str(sdk / "tests"), "-c", str(sdk / "pyproject.toml"),
            "--rootdir", str(sdk), "-p", "no:cacheprovider", "-p", "helpers.upstream_sdk_probe", "-q",
            f"--junitxml={out / f'{mode}.xml'}"]
    if mode == "plugin":
        args += ["-p", "helpers.upstream_sdk_instrument"]
    elif mode == "launcher":
        launcher = shutil.which("opentelemetry-instrument", path=str(BIN))
        assert launcher is not None, "opentelemetry-instrument is not installed in this venv"
        args = [launcher, *args]
        env.update(OTEL_SERVICE_NAME="upstream-sdk-tests", OTEL_TRACES_EXPORTER="none",
                   OTEL_METRICS_EXPORTER="none", OTEL_LOGS_EXPORTER="none",
                   # exo_otel's instrumentors only: the comparison is about exo_otel.
                   OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="aiohttp-client")
    work = out / mode
    work.mkdir()
    return subprocess.Popen(args, cwd=work, env=env, stdout=(out / f"{mode}.out").open("w"),
                            stderr=subprocess.STDOUT, text=True)


def _results(junit: Path) -> dict[str, str]:
    results = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = child.tag
                break
        results[f"{case.get('classname')}::{case.get('name')}"] = outcome
    return results


@pytest.mark.timeout(600)
def test_upstream_sdk_tests_unchanged_by_exo_otel(tmp_path: Path) -> None:
    sdk, origin = python_sdk_tests()
    if sdk is None:
        pytest.skip(origin)
    modes = ("plain", "plugin", "launcher")
    processes = {mode: _run(mode, sdk, tmp_path) for mode in modes}
    for process in processes.values():
        process.wait(timeout=540)
    results, probes, leaks = {}, {}, {}
    for mode in modes:
        output = (tmp_path / f"{mode}.out").read_text()
        assert (tmp_path / f"{mode}.xml").is_file(), f"{mode}: no results\n{output[-3000:]}"
        results[mode] = _results(tmp_path / f"{mode}.xml")
        probes[mode] = json.loads((tmp_path / f"{mode}.probe.json").read_text())
        leaks[mode] = {marker: output.count(marker) for marker in LEAK_MARKERS}
    print(f"\n[upstream python-sdk tests, {origin}]")
    for mode in modes:
        counts: dict[str, int] = {}
        for outcome in results[mode].values():
            counts[outcome] = counts.get(outcome, 0) + 1
        print(f"  {mode:8} {len(results[mode])} tests {counts} "
              f"exo_otel loaded={probes[mode]['instrumented']} spans={probes[mode]['spans']} "
              f"{probes[mode]['span_kinds']} leaks={leaks[mode]}")
    assert not probes["plain"]["instrumented"]
    assert probes["plugin"]["instrumented"] and probes["plugin"]["sdk_provider"]
    assert probes["launcher"]["instrumented"] and probes["launcher"]["sdk_provider"]
    assert probes["plugin"]["spans"] > 0 and probes["launcher"]["spans"] > 0
    assert len(results["plain"]) >= 170, "upstream's suite did not run whole"
    for mode in ("plugin", "launcher"):
        differing = {test: (results["plain"].get(test), results[mode].get(test))
                     for test in results["plain"].keys() | results[mode].keys()
                     if results["plain"].get(test) != results[mode].get(test)}
        assert differing == {}, f"{mode}: results differ from the plain run (plain, {mode})"
        assert leaks[mode] == leaks["plain"], f"{mode}: resources left open that the plain run does not leave"
