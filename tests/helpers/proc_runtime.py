"""A real exospherehost Runtime in a process of its own, for the cross-process tests.

Run it under ``opentelemetry-instrument`` (the tests do) so that it is instrumented the way users
deploy it. It serves the named nodes until SIGTERM or SIGINT, then returns normally so that the
launcher's providers flush at exit::

    opentelemetry-instrument python tests/helpers/proc_runtime.py --uri URI --key KEY \\
        --namespace NS --nodes StartNode,PrepNode --name runtime-a

Also defines the two-node "pair" graph the sampling test runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from exospherehost import BaseNode, GraphNodeModel, Runtime, StoreConfigModel
from pydantic import BaseModel

from helpers import HELPERS_DIR, conformance_graph, upstream_graph
from helpers import TESTS_DIR as TESTS_PATH

PAIR_NAMESPACE = "exo-otel-pair"
PAIR_GRAPH = "pair"
PAIR_STORE_CONFIG = StoreConfigModel(required_keys=["word"])


class PairFirstNode(BaseNode):
    class Inputs(BaseModel):
        word: str

    class Outputs(BaseModel):
        upper: str

    async def execute(self) -> BaseNode.Outputs:
        return self.Outputs(upper=self.inputs.word.upper())


class PairSecondNode(BaseNode):
    class Inputs(BaseModel):
        upper: str

    class Outputs(BaseModel):
        length: str

    async def execute(self) -> BaseNode.Outputs:
        return self.Outputs(length=str(len(self.inputs.upper)))


def pair_graph_nodes() -> list[GraphNodeModel]:
    """first -> second; the trigger's store gives ``word``."""
    return [
        GraphNodeModel(node_name=PairFirstNode.__name__, namespace=PAIR_NAMESPACE, identifier="first",
                       inputs={"word": "${{ store.word }}"}, next_nodes=["second"]),
        GraphNodeModel(node_name=PairSecondNode.__name__, namespace=PAIR_NAMESPACE, identifier="second",
                       inputs={"upper": "${{ first.outputs.upper }}"}),
    ]


KNOWN_NODES: dict[str, type[BaseNode]] = {
    node.__name__: node
    for node in [*conformance_graph.NODES, PairFirstNode, PairSecondNode, *upstream_graph.NODES]
}


async def serve(args: argparse.Namespace) -> None:
    runtime = Runtime(
        namespace=args.namespace, name=args.name, nodes=[KNOWN_NODES[n] for n in args.nodes.split(",")],
        state_manager_uri=args.uri, key=args.key, workers=args.workers, batch_size=args.batch_size,
        poll_interval=args.poll_interval,
    )
    task = runtime.start()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uri", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--nodes", required=True, help="comma-separated node class names")
    parser.add_argument("--name", default="proc-runtime")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--poll-interval", type=float, default=0.05)
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()


# ---- launching these scripts from a test ------------------------------------------------------------

def otel_env(endpoint: str, service: str, **extra: str) -> dict[str, str]:
    """The environment of an instrumented subprocess exporting OTLP/HTTP to ``endpoint``.

    Inherited OTEL_* variables are dropped so a developer's shell cannot change what the test sees.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(
        OTEL_SERVICE_NAME=service,
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
        OTEL_PYTHON_ID_GENERATOR="exosphere",
        OTEL_BSP_SCHEDULE_DELAY="100",  # ms; the default 5 s would slow every test down
        PYTHONPATH=os.pathsep.join(filter(None, [TESTS_DIR, env.get("PYTHONPATH")])),
    )
    env.update(extra)
    return env


TESTS_DIR = str(TESTS_PATH)  # on the children's PYTHONPATH: they import helpers.<module>
LAUNCHER = os.path.join(os.path.dirname(sys.executable), "opentelemetry-instrument")


def launch(
    script: str, args: list[str], env: dict[str, str], log: Path, **popen: Any
) -> subprocess.Popen[str]:
    """``opentelemetry-instrument python tests/helpers/<script> ARGS`` with ``env``, stderr to ``log``."""
    command = [LAUNCHER, sys.executable, str(HELPERS_DIR / script), *args]
    with log.open("w") as stderr:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(command, env=env, text=True, stderr=stderr, **popen)


def print_logs(directory: Path, lines: int = 40) -> None:
    """The last ``lines`` of each subprocess log, for pytest to show when a test fails."""
    for path in sorted(directory.glob("*.log")):
        tail = [line for line in path.read_text().splitlines() if "Enqueued states: 0" not in line]
        print(f"---- {path.name}", *tail[-lines:], sep="\n")


def stop(process: subprocess.Popen[str], timeout: float = 10.0) -> None:
    """SIGTERM (the script then exits normally and the launcher flushes), SIGKILL if it hangs."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)
