"""Every query exo_otel's MongoDB store makes on its own collections, as SecantusDB plans and runs it,
beside 10 and 10,000 open runs that never settle.

The store is driven for real (`MongoRunStore` and a `Sweeper` over pymongo on a SecantusDB process):
the stuck runs are written as benchmarks/background_check.py writes them, then one run goes its whole
way (triggered, a state executed and one errored, a requeue, a reported cost, swept, settled, closed,
retried, closed again, purged) and a run is revived; the background check's page, the purge and the
take-over of stale claims run too. pymongo's command monitoring records every command sent to an
exo_otel collection; each distinct query (the filter of a find, or of an update's or delete's
statement, which SecantusDB routes through the same index choice) is then explained
(``executionStats``) and run ``--repeat`` times, with the database process's CPU per run read from
/proc. SecantusDB's explain reports ``totalDocsExamined`` as the documents returned for an index
scan, not the candidates its bounds admitted, so the CPU per query is the measure of those: flat from
10 to 10,000 open runs when the bounds admit only what the query is about.

Run with the server venv's python the harness built (pymongo, bson) and the tools venv's SecantusDB:
``PYTHONPATH=src:tests /tmp/exo-otel-upstream/server-<hash>/bin/python benchmarks/query_plans.py
[--open 10 10000] [--repeat 20]``. No assertions: the numbers are the result.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import time
import uuid
from typing import Any

import pymongo
from bson import ObjectId
from opentelemetry.sdk.trace import TracerProvider
from pymongo import monitoring

from background_check import UPSTREAM_STATE_INDEXES, add_stuck_runs
from exo_otel.server.context import new_run_context
from exo_otel.server.mongo_store import CLAIMS_COLLECTION, NOTES_COLLECTION, RUNS_COLLECTION, MongoRunStore
from exo_otel.server.sweeper import Sweeper
from helpers.process_cpu import tree_cpu_seconds
from helpers.upstream_harness import secantus_database

OURS = (RUNS_COLLECTION, NOTES_COLLECTION, CLAIMS_COLLECTION)
WRITES = {"update": "updates", "delete": "deletes"}


class Queries(monitoring.CommandListener):
    """The queries sent to exo_otel's collections: (command, collection, filter, sort), in order."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, dict[str, Any], dict[str, Any] | None]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        command = event.command
        name = event.command_name
        collection = command.get(name)
        if collection not in OURS:
            return
        if name == "find":
            self.seen.append((name, collection, dict(command.get("filter") or {}), command.get("sort")))
        elif name in WRITES:
            for statement in command.get(WRITES[name]) or ():
                self.seen.append((name, collection, dict(statement.get("q") or {}), None))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


def shape(value: Any) -> Any:
    """A filter with its values replaced by their types: one line per query, whatever the run."""
    if isinstance(value, dict):
        return {key: shape(inner) for key, inner in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return type(value).__name__


def state_document(run_id: str, identifier: str, status: str) -> dict[str, Any]:
    created = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    return {"_id": ObjectId(), "run_id": run_id, "identifier": identifier, "node_name": identifier.title(),
            "namespace_name": "ns", "graph_name": "g", "status": status, "created_at": created,
            "updated_at": created, "enqueue_after": 0, "retry_count": 0, "parents": {}, "inputs": {},
            "outputs": {}}


async def one_whole_run(database: Any, store: MongoRunStore, sweeper: Sweeper) -> None:
    """Every store call the hooks and the sweep make, on one run and a revived one."""
    run = new_run_context(str(uuid.uuid4()), "ns", "g", time.time_ns(), None, None)
    await store.save_run(run)
    states = [state_document(run.run_id, "start", "SUCCESS"), state_document(run.run_id, "side", "ERRORED")]
    await database["State"].insert_many(states)
    await store.mark_ready(run)
    done, failed = str(states[0]["_id"]), str(states[1]["_id"])
    store.states_taken({done: run.run_id})
    await store.note_requeue(done, time.time_ns(), 10)
    cost = await store.note_cost(done, 0.1)
    refused = await store.note_cost(done, 0.2)
    await store.withdraw_note(refused)
    token = await store.begin_next_states([done])
    await store.end_next_states(token, time.time_ns())
    await store.note_settled(failed)
    assert cost is not None
    sweeper.retention_seconds = 0.0
    await sweeper.sweep_once()  # swept, settled, closed (expiring at once)
    retry = state_document(run.run_id, "side", "SUCCESS")
    await database["State"].insert_one(retry)
    await store.note_retry(str(retry["_id"]), failed, run.run_id)
    await store.note_settled(str(retry["_id"]))
    await sweeper.sweep_once()  # reopened, swept, closed again
    await store.renew_claims([f"outcome:{run.run_id}"], sweeper.lease_until())
    sweeper._next_upkeep = 0.0
    await sweeper.sweep_once()  # the purge removes it
    revived = new_run_context(str(uuid.uuid4()), "ns", "g", time.time_ns(), None, None)
    await store.revive_run(revived)
    await store.load_runs([revived.run_id])
    discarded = new_run_context(str(uuid.uuid4()), "ns", "g", time.time_ns(), None, None)
    await store.save_run(discarded)
    await store.stalled_triggers(time.time_ns() + 1, 10)  # the trigger just begun, taken for stalled
    await store.runs_with_states([discarded.run_id])
    await store.discard_run(discarded.run_id)


async def main(totals: list[int], repeat: int) -> None:
    queries = Queries()
    with secantus_database() as server:
        client: Any = pymongo.AsyncMongoClient(server.uri, event_listeners=[queries])
        database = client[f"plans-{uuid.uuid4().hex[:8]}"]
        for keys, name in UPSTREAM_STATE_INDEXES:
            await database["State"].create_index(keys, name=name)
        store = MongoRunStore(lambda: database["State"])
        sweeper = Sweeper(store, TracerProvider().get_tracer("query-plans"))
        opened = 0
        for total in totals:
            await add_stuck_runs(database, total - opened)
            opened = total
            queries.seen.clear()
            await one_whole_run(database, store, sweeper)
            for _ in range(3):  # pages of the background check over the stuck runs, and the upkeep
                sweeper._next_page = sweeper._next_upkeep = 0.0
                await sweeper.sweep_once()
            distinct: dict[str, tuple[str, str, dict[str, Any], dict[str, Any] | None]] = {}
            for name, collection, query, sort in queries.seen:
                label = f"{collection} {name} {shape(query)} sort {sort}"
                distinct.setdefault(label, (name, collection, query, sort))
            print(f"{total} open runs: {len(queries.seen)} queries on exo_otel's collections, "
                  f"{len(distinct)} distinct", flush=True)
            for label, (_name, collection, query, sort) in sorted(distinct.items()):
                explained = await database.command(
                    {"explain": {"find": collection, "filter": query, **({"sort": sort} if sort else {})},
                     "verbosity": "executionStats"}
                )
                plan = explained["queryPlanner"]["winningPlan"]
                while "inputStage" in plan and plan.get("stage") != "IXSCAN":
                    plan = plan["inputStage"]
                used = plan.get("indexName", plan.get("stage"))
                stats = explained["executionStats"]
                before = tree_cpu_seconds(server.process.pid)
                for _ in range(repeat):
                    cursor = database[collection].find(query)
                    await (cursor.sort(list(sort.items())) if sort else cursor).to_list(None)
                per_query = (tree_cpu_seconds(server.process.pid) - before) / repeat * 1e3
                print(f"  {label}: {plan.get('stage')} {used}, nReturned {stats['nReturned']}, "
                      f"totalDocsExamined {stats['totalDocsExamined']}, the database {per_query:.2f} ms CPU "
                      f"per query (mean of {repeat})", flush=True)
        await client.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--open", type=int, nargs="+", default=[10, 10000])
    parser.add_argument("--repeat", type=int, default=20)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.open, arguments.repeat))
