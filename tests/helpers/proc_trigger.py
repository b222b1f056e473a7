"""Upsert a graph and trigger runs of it from a process of its own; print the run ids as JSON.

Run it under ``opentelemetry-instrument`` (the tests do)::

    opentelemetry-instrument python tests/helpers/proc_trigger.py --uri URI --key KEY --graph pair --runs 200
"""

from __future__ import annotations

import argparse
import asyncio
import json
import uuid

from exospherehost import StateManager

from helpers import conformance_graph as cg
from helpers import proc_runtime as pr


async def trigger_runs(args: argparse.Namespace) -> list[str]:
    if args.graph == "conformance":
        namespace, graph, nodes = cg.NAMESPACE, cg.GRAPH, cg.graph_nodes()
        extra = {"retry_policy": cg.RETRY_POLICY, "store_config": cg.STORE_CONFIG}
        secrets = cg.SECRETS
    else:
        namespace, graph, nodes = pr.PAIR_NAMESPACE, pr.PAIR_GRAPH, pr.pair_graph_nodes()
        extra, secrets = {"store_config": pr.PAIR_STORE_CONFIG}, {}
    client = StateManager(namespace=namespace, state_manager_uri=args.uri, key=args.key)
    await client.upsert_graph(graph, nodes, secrets, polling_interval=0.05, **extra)
    store_key = "topic" if args.graph == "conformance" else "word"
    semaphore = asyncio.Semaphore(args.concurrency)

    async def one() -> str:
        async with semaphore:
            answer = await client.trigger(graph, store={store_key: uuid.uuid4().hex})
            return str(answer["run_id"])

    return await asyncio.gather(*(one() for _ in range(args.runs)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uri", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--graph", choices=["conformance", "pair"], required=True)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=8)
    print(json.dumps(asyncio.run(trigger_runs(parser.parse_args()))), flush=True)


if __name__ == "__main__":
    main()
