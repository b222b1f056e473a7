"""The runs whose trigger began and never completed, read from a state manager's database; run with the
server's Python (it has pymongo): ``unready_runs.py URI DATABASE``.

Prints one JSON object: each run of ``exo_otel_runs`` not ready (its context kept, its trigger's end
never reached), with whether the app holds a state of it.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from pymongo import MongoClient


def main(uri: str, name: str) -> None:
    client: MongoClient[dict[str, Any]] = MongoClient(uri)
    database = client[name]
    runs = [str(doc["_id"]) for doc in database["exo_otel_runs"].find({"ready": False}, {"_id": 1})]
    states = database["State"]
    print(json.dumps({run: states.find_one({"run_id": run}, {"_id": 1}) is not None for run in runs}))
    client.close()


if __name__ == "__main__":
    main(*sys.argv[1:3])
