"""How long `exo-otel demo --runs 1` takes with the OTLP collector down, against the demo exporting nowhere.

Usage: ``.venv/bin/python benchmarks/demo_collector_down.py [--repeat N] [--src DIR]``. ``--src`` runs
another tree's ``src`` (for instance an older commit from ``git archive``) with this interpreter, to
compare. Prints seconds per run and the median per case; nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
CASES = {
    "in memory (baseline)": {},
    "collector down, grpc": {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
    "collector down, http/protobuf": {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
}


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_once(src: Path, extra: dict[str, str]) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "EXO_OTEL_"))}
    env["PYTHONPATH"] = str(src)
    env.update(extra)
    if extra:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{closed_port()}"
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "exo_otel_demo.cli", "demo", "--runs", "1"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )
    elapsed = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"the demo failed ({done.returncode}): {done.stdout}{done.stderr}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--src", type=Path, default=SRC, help="the src folder to run (default: this one's)")
    args = parser.parse_args()
    print(f"exo-otel demo --runs 1, src {args.src}, {args.repeat} runs per case")
    medians = {}
    for name, extra in CASES.items():
        times = [run_once(args.src, extra) for _ in range(args.repeat)]
        medians[name] = statistics.median(times)
        print(f"  {name:32} median {medians[name]:5.1f} s  ({', '.join(f'{t:.1f}' for t in times)})")
    baseline = medians["in memory (baseline)"]
    for name, median in medians.items():
        print(f"  {name:32} {median - baseline:+5.1f} s over the baseline")


if __name__ == "__main__":
    main()
