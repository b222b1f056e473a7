"""Upstream's own enqueue query on SecantusDB as its State collection grows: why rounds of runs slow down.

Upstream 0.0.3 answers a runtime's poll (``/states/enqueue``) with ``batch_size`` calls of
``find_one_and_update({namespace_name, status: CREATED, node_name: {$in}, enqueue_after: {$lte: now}})``
(app/controller/enqueue_states.py); its index for it, ``enqueue_query``, starts with ``enqueue_after``.
This writes settled states (SUCCESS, in the polled namespace) and stuck ones (CREATED, in another
namespace) into a SecantusDB with upstream's State indexes and times that call with nothing to take, as
an idle poll makes it, at each size: the database process's CPU per call (from /proc, 10 ms ticks,
averaged over the calls), the wall time, and the documents SecantusDB's explain says it examined.
No exo_otel code runs here: this is the server's and the database's cost alone.

Run with the server venv's python (it needs pymongo and bson):
``PYTHONPATH=src:tests /tmp/exo-otel-upstream/server-<hash>/bin/python benchmarks/upstream_enqueue_scan.py
[--settled 200 1000 2000 4000] [--stuck 0] [--calls 10]``. No assertions: the numbers are the result.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import time
from typing import Any

import pymongo  # the server venv's
from bson import ObjectId

from helpers.process_cpu import tree_cpu_seconds
from helpers.upstream_harness import secantus_database

# Upstream 0.0.3's State indexes that this query and these documents meet (app/models/db/state.py).
INDEXES = (
    ([("enqueue_after", 1), ("status", 1), ("namespace_name", 1), ("node_name", 1)], "enqueue_query"),
    ([("run_id", 1), ("status", 1)], "run_id_status_index"),
)


def states(count: int, namespace: str, status: str) -> list[dict[str, Any]]:
    now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    before = int(time.time() * 1000) - 1000
    return [{"_id": ObjectId(), "run_id": str(ObjectId()), "namespace_name": namespace, "node_name": "Step",
             "identifier": "step0", "graph_name": "g", "status": status, "enqueue_after": before,
             "created_at": now, "updated_at": now, "inputs": {}, "outputs": {}} for _ in range(count)]


async def main(settled: list[int], stuck: int, calls: int) -> None:
    with secantus_database() as server:
        client: Any = pymongo.AsyncMongoClient(server.uri)
        collection = client["enqueue-scan"]["State"]
        for keys, name in INDEXES:
            await collection.create_index(keys, name=name)
        if stuck:
            await collection.insert_many(states(stuck, "stuck", "CREATED"))
        have = 0
        for total in settled:
            if total > have:
                await collection.insert_many(states(total - have, "polled", "SUCCESS"))
                have = total
            query = {"namespace_name": "polled", "status": "CREATED", "node_name": {"$in": ["Step"]},
                     "enqueue_after": {"$lte": int(time.time() * 1000)}}
            cpu_before, started = tree_cpu_seconds(server.process.pid), time.perf_counter()
            for _ in range(calls):
                await collection.find_one_and_update(query, {"$set": {"status": "QUEUED"}})
            wall = (time.perf_counter() - started) / calls
            cpu = (tree_cpu_seconds(server.process.pid) - cpu_before) / calls
            stats = (await collection.find(query).explain()).get("executionStats", {})
            print(f"{total} settled states in the polled namespace, {stuck} stuck elsewhere: an idle enqueue "
                  f"call {wall * 1e3:.1f} ms wall, {cpu * 1e3:.1f} ms database CPU; documents examined "
                  f"{stats.get('totalDocsExamined')}", flush=True)
        await client.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settled", type=int, nargs="+", default=[200, 1000, 2000, 4000])
    parser.add_argument("--stuck", type=int, default=0, help="CREATED states in another namespace")
    parser.add_argument("--calls", type=int, default=10)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.settled, arguments.stuck, arguments.calls))
