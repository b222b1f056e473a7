"""Upserts the example graph and triggers runs, printing each run id (and its trace id when
exo_otel is importable). Run it under `opentelemetry-instrument` so the trigger spans are exported."""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys

from demo_graph import GRAPH_NAME, NAMESPACE, graph_nodes, retry_policy
from exospherehost import StateManager

UPSERT_ATTEMPTS = 30
UPSERT_RETRY_DELAY_S = 2.0


async def upsert(state_manager: StateManager) -> None:
    """Retries while the runtime has not registered its nodes yet (validation fails until then)."""
    for attempt in range(1, UPSERT_ATTEMPTS + 1):
        try:
            await state_manager.upsert_graph(
                GRAPH_NAME, graph_nodes=graph_nodes(), secrets={}, retry_policy=retry_policy()
            )
            return
        except Exception as exc:
            if attempt == UPSERT_ATTEMPTS:
                raise
            print(f"upsert attempt {attempt} failed ({exc}); retrying", file=sys.stderr)
            await asyncio.sleep(UPSERT_RETRY_DELAY_S)


def trace_link(run_id: str) -> str:
    try:
        from exo_otel import format_trace_id
    except ImportError:
        return ""
    jaeger = os.environ.get("JAEGER_UI_URL", "http://localhost:16686")
    return f"  trace {format_trace_id(run_id)}  {jaeger}/trace/{format_trace_id(run_id)}"


async def main(runs: int, interval_s: float) -> None:
    state_manager = StateManager(namespace=NAMESPACE)
    await upsert(state_manager)
    for n in range(runs):
        inputs = {"batch_id": f"batch-{n}", "size": str(random.randint(2, 6))}
        result = await state_manager.trigger(GRAPH_NAME, inputs=inputs)
        run_id = result["run_id"]
        print(f"run {run_id}{trace_link(run_id)}", flush=True)
        await asyncio.sleep(interval_s)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5, help="how many runs to trigger (default 5)")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between triggers")
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = parse_args()
    asyncio.run(main(args.runs, args.interval))
