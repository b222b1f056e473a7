"""In-process stand-in for MongoDB: pymongo's *async* client API over mongomock's engine.

``install()`` replaces ``pymongo.AsyncMongoClient`` with :class:`MemoryMongoClient`, so the
unmodified upstream state manager (beanie 2.0.1 on pymongo 4.13 async) runs without a server.
Every client made in the process shares ONE store, so several app instances in one process
behave like several server processes on one database.

How it differs from a real MongoDB:

* Each call runs atomically under one process-wide lock on mongomock 4.3.0's synchronous
  engine (a ``bulk_write`` as a whole too); the loop is never blocked for longer than one call.
* Before touching the store every call awaits ``asyncio.sleep(0)`` N times, like a network round
  trip, so concurrent requests interleave between the app's database calls.
  N = env ``EXO_OTEL_MEMORY_DB_YIELD`` (default 1, read per call; 0 disables).
* Values cross the boundary through a BSON encode/decode, as on the wire: str-enums become
  plain str, datetimes become naive UTC with millisecond precision, unencodable values fail.
* TTL indexes (``expireAfterSeconds``) are stored but never enforced: nothing expires.
* Queries are linear scans (indexes only enforce uniqueness, partial filters honoured).
* Sessions are accepted and ignored; there are no transactions (abort does not roll back).
* Cursors read their whole result on the first fetch (a snapshot), not in batches.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from collections.abc import Iterable, Mapping
from typing import Any

import bson
import mongomock
import pymongo
from bson import ObjectId
from pymongo import operations as ops
from pymongo.errors import (
    BulkWriteError,
    CollectionInvalid,
    DuplicateKeyError,
    InvalidOperation,
    OperationFailure,
    WriteError,
)
from pymongo.results import BulkWriteResult, DeleteResult, InsertManyResult, InsertOneResult, UpdateResult

YIELD_ENV = "EXO_OTEL_MEMORY_DB_YIELD"
STATES_COLLECTION = "State"  # upstream's State model sets no Settings.name: the class name
_LOCK = threading.RLock()
_engine: mongomock.MongoClient | None = None
_SERVER_VERSION = "7.0.0"


def _store() -> mongomock.MongoClient:
    global _engine
    with _LOCK:
        if _engine is None:
            _engine = mongomock.MongoClient(tz_aware=False)
        return _engine


async def _round_trip() -> None:
    for _ in range(int(os.environ.get(YIELD_ENV, "1") or 0)):
        await asyncio.sleep(0)


def _wire(value: Any) -> Any:
    """What the server would see: the value after a BSON encode/decode."""
    return bson.decode(bson.encode({"v": value}))["v"]


def _keys(spec: Any, direction: Any = None) -> list[tuple[str, Any]] | None:
    """Normalise a sort or index key spec to a list of (field, direction)."""
    if spec is None:
        return None
    if isinstance(spec, str):
        return [(str(spec), 1 if direction is None else direction)]
    if isinstance(spec, Mapping):
        spec = spec.items()
    out = [(str(k[0]), k[1]) if isinstance(k, (tuple, list)) else (str(k), 1) for k in spec]
    return out or None


def _unsession(kwargs: dict[str, Any], *allowed: str) -> dict[str, Any]:
    return {k: v for k, v in kwargs.items() if k in allowed and v is not None}


class MemorySession:
    """Accepted wherever pymongo takes ``session=``; no isolation, no rollback."""

    def __init__(self, client: MemoryMongoClient) -> None:
        self.client = client
        self.in_transaction = False

    async def __aenter__(self) -> MemorySession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.end_session()

    async def start_transaction(self, *args: Any, **kwargs: Any) -> MemorySession:
        self.in_transaction = True
        return self

    async def commit_transaction(self) -> None:
        self.in_transaction = False

    async def abort_transaction(self) -> None:
        self.in_transaction = False

    async def end_session(self) -> None:
        self.in_transaction = False


class MemoryCursor:
    """pymongo ``AsyncCursor`` / ``AsyncCommandCursor`` over a snapshot read on first fetch."""

    def __init__(self, fetch: Any, docs: list[dict[str, Any]] | None = None) -> None:
        self._fetch = fetch
        self._docs = docs
        self._pos = 0
        self._sort: list[tuple[str, Any]] | None = None
        self._skip = 0
        self._limit = 0

    def _check_unused(self) -> MemoryCursor:
        if self._docs is not None:
            raise InvalidOperation("cannot set options after executing query")
        return self

    def sort(self, key_or_list: Any, direction: Any = None) -> MemoryCursor:
        self._check_unused()._sort = _keys(key_or_list, direction)
        return self

    def skip(self, skip: int) -> MemoryCursor:
        self._check_unused()._skip = skip
        return self

    def limit(self, limit: int) -> MemoryCursor:
        self._check_unused()._limit = limit
        return self

    def batch_size(self, batch_size: int) -> MemoryCursor:
        return self

    def max_time_ms(self, max_time_ms: int | None) -> MemoryCursor:
        return self

    hint = comment = collation = max_await_time_ms = batch_size

    async def _ensure(self) -> list[dict[str, Any]]:
        if self._docs is None:
            await _round_trip()
            with _LOCK:
                self._docs = self._fetch(self._sort, self._skip, self._limit)
        return self._docs

    @property
    def alive(self) -> bool:
        return self._docs is None or self._pos < len(self._docs)

    async def to_list(self, length: int | None = None) -> list[dict[str, Any]]:
        if isinstance(length, int) and length < 1:
            raise ValueError("to_list() length must be greater than 0")
        docs = await self._ensure()
        end = len(docs) if length is None else min(len(docs), self._pos + length)
        out, self._pos = docs[self._pos:end], end
        return out

    async def next(self) -> dict[str, Any]:
        docs = await self._ensure()
        if self._pos >= len(docs):
            raise StopAsyncIteration
        self._pos += 1
        return docs[self._pos - 1]

    __anext__ = next

    def __aiter__(self) -> MemoryCursor:
        return self

    async def close(self) -> None:
        self._docs, self._pos = [], 0

    async def __aenter__(self) -> MemoryCursor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class MemoryCollection:
    """pymongo ``AsyncCollection`` subset used by beanie 2.0.1 and the state manager."""

    def __init__(self, database: MemoryDatabase, name: str) -> None:
        self.database = database
        self.name = name
        self.full_name = f"{database.name}.{name}"

    @property
    def _sync(self) -> Any:
        return _store()[self.database.name][self.name]

    def __getitem__(self, name: str) -> MemoryCollection:
        return MemoryCollection(self.database, f"{self.name}.{name}")

    def with_options(self, *args: Any, **kwargs: Any) -> MemoryCollection:
        return self

    def _dup(self, doc: Mapping[str, Any], index: int = 0) -> DuplicateKeyError:
        """The server's E11000 error for ``doc`` (which was not stored)."""
        indexes = [("_id_", {"key": [("_id", 1)], "unique": True})]
        indexes += list(self._sync.index_information().items())
        for name, info in indexes:
            if not info.get("unique"):
                continue
            value = {k: _dotted(doc, k) for k, _ in info["key"]}
            query: dict[str, Any] = dict(value)
            if info.get("partialFilterExpression"):
                query = {"$and": [info["partialFilterExpression"], query]}
            if name != "_id_":
                query = {"$and": [query, {"_id": {"$ne": doc.get("_id")}}]}
            if self._sync.count_documents(query):
                shown = ", ".join(f"{k}: {v!r}" for k, v in value.items())
                msg = (f"E11000 duplicate key error collection: {self.full_name} "
                       f"index: {name} dup key: {{ {shown} }}")
                details = {"index": index, "code": 11000, "errmsg": msg,
                           "keyPattern": dict(info["key"]), "keyValue": value}
                return DuplicateKeyError(msg, 11000, details)
        return DuplicateKeyError(f"E11000 duplicate key error collection: {self.full_name}", 11000)

    async def insert_one(self, document: dict[str, Any], *args: Any, **kwargs: Any) -> InsertOneResult:
        await _round_trip()
        document.setdefault("_id", ObjectId())
        doc = _wire(document)
        with _LOCK:
            try:
                self._sync.insert_one(doc)
            except DuplicateKeyError:
                raise self._dup(doc) from None
        return InsertOneResult(doc["_id"], True)

    async def insert_many(self, documents: Iterable[dict[str, Any]], ordered: bool = True,
                          *args: Any, **kwargs: Any) -> InsertManyResult:
        documents = list(documents) if not isinstance(documents, Mapping) else []
        if not documents:
            raise TypeError("documents must be a non-empty list")
        await _round_trip()
        for d in documents:
            d.setdefault("_id", ObjectId())
        with _LOCK:
            return InsertManyResult(self._bulk([ops.InsertOne(d) for d in documents], ordered)[1], True)

    def _bulk(self, requests: list[Any], ordered: bool) -> tuple[dict[str, Any], list[Any]]:
        """Run write operations in order; raise BulkWriteError like the server would."""
        res: dict[str, Any] = {"writeErrors": [], "writeConcernErrors": [], "nInserted": 0,
                               "nUpserted": 0, "nMatched": 0, "nModified": 0, "nRemoved": 0,
                               "upserted": []}
        ids: list[Any] = []
        coll = self._sync
        for i, op in enumerate(requests):
            try:
                if isinstance(op, ops.InsertOne):
                    doc = _wire(op._doc)
                    try:
                        coll.insert_one(doc)
                    except DuplicateKeyError:
                        raise self._dup(doc, i) from None
                    ids.append(doc["_id"])
                    res["nInserted"] += 1
                    continue
                if isinstance(op, (ops.DeleteOne, ops.DeleteMany)):
                    many = isinstance(op, ops.DeleteMany)
                    raw = (coll.delete_many if many else coll.delete_one)(_wire(op._filter)).raw_result
                    res["nRemoved"] += raw.get("n", 0)
                    continue
                if isinstance(op, ops.ReplaceOne):
                    r = coll.replace_one(_wire(op._filter), _wire(op._doc), upsert=bool(op._upsert))
                else:
                    fn = coll.update_many if isinstance(op, ops.UpdateMany) else coll.update_one
                    r = fn(_wire(op._filter), _wire(op._doc), upsert=bool(op._upsert),
                           array_filters=op._array_filters)
                if r.upserted_id is not None:
                    res["nUpserted"] += 1
                    res["upserted"].append({"index": i, "_id": r.upserted_id})
                else:
                    res["nMatched"] += r.matched_count
                    res["nModified"] += r.modified_count or 0
            except WriteError as err:
                details = dict(err.details or {})
                res["writeErrors"].append({"index": i, "code": err.code,
                                           "errmsg": details.get("errmsg", str(err)),
                                           "keyPattern": details.get("keyPattern"),
                                           "keyValue": details.get("keyValue"),
                                           "op": getattr(op, "_doc", None)})
                if ordered:
                    break
        if res["writeErrors"]:
            raise BulkWriteError(res)
        return res, ids

    async def bulk_write(self, requests: Iterable[Any], ordered: bool = True,
                         *args: Any, **kwargs: Any) -> BulkWriteResult:
        requests = list(requests)
        if not requests:
            raise InvalidOperation("No operations to execute")
        await _round_trip()
        with _LOCK:
            return BulkWriteResult(self._bulk(requests, ordered)[0], True)

    async def _update(self, method: str, filter: Any, doc: Any, upsert: bool,
                      array_filters: Any = None) -> UpdateResult:
        await _round_trip()
        extra = {"array_filters": _wire(array_filters)} if array_filters else {}
        with _LOCK:
            try:
                r = getattr(self._sync, method)(_wire(filter), _wire(doc), upsert=upsert, **extra)
            except DuplicateKeyError as err:
                raise DuplicateKeyError(f"E11000 duplicate key error collection: {self.full_name} "
                                        f"({err})", 11000) from None
        return UpdateResult(dict(r.raw_result), True)

    async def update_one(self, filter: Any, update: Any, upsert: bool = False,
                         bypass_document_validation: Any = None, collation: Any = None,
                         array_filters: Any = None, **kwargs: Any) -> UpdateResult:
        return await self._update("update_one", filter, update, upsert, array_filters)

    async def update_many(self, filter: Any, update: Any, upsert: bool = False,
                          array_filters: Any = None, bypass_document_validation: Any = None,
                          **kwargs: Any) -> UpdateResult:
        return await self._update("update_many", filter, update, upsert, array_filters)

    async def replace_one(self, filter: Any, replacement: Any, upsert: bool = False,
                          *args: Any, **kwargs: Any) -> UpdateResult:
        return await self._update("replace_one", filter, replacement, upsert)

    async def _find_and(self, method: str, filter: Any, *args: Any, **kwargs: Any) -> Any:
        await _round_trip()
        kw = _unsession(kwargs, "projection", "sort", "upsert", "return_document", "array_filters")
        if "sort" in kw:
            kw["sort"] = _keys(kw["sort"])
        kw = {k: (_wire(v) if k in ("projection", "array_filters") else v) for k, v in kw.items()}
        with _LOCK:
            try:
                return getattr(self._sync, method)(_wire(filter), *map(_wire, args), **kw)
            except DuplicateKeyError as err:
                raise DuplicateKeyError(f"E11000 duplicate key error collection: {self.full_name} "
                                        f"({err})", 11000) from None

    async def find_one_and_update(self, filter: Any, update: Any, **kwargs: Any) -> Any:
        return await self._find_and("find_one_and_update", filter, update, **kwargs)

    async def find_one_and_replace(self, filter: Any, replacement: Any, **kwargs: Any) -> Any:
        return await self._find_and("find_one_and_replace", filter, replacement, **kwargs)

    async def find_one_and_delete(self, filter: Any, **kwargs: Any) -> Any:
        return await self._find_and("find_one_and_delete", filter, **kwargs)

    async def _delete(self, method: str, filter: Any) -> DeleteResult:
        await _round_trip()
        with _LOCK:
            return DeleteResult(dict(getattr(self._sync, method)(_wire(filter)).raw_result), True)

    async def delete_one(self, filter: Any, *args: Any, **kwargs: Any) -> DeleteResult:
        return await self._delete("delete_one", filter)

    async def delete_many(self, filter: Any, *args: Any, **kwargs: Any) -> DeleteResult:
        return await self._delete("delete_many", filter)

    def find(self, filter: Any = None, projection: Any = None, skip: int = 0, limit: int = 0,
             sort: Any = None, *args: Any, **kwargs: Any) -> MemoryCursor:
        query, proj = _wire(filter or {}), _wire(projection)

        def fetch(order: Any, n_skip: int, n_limit: int) -> list[dict[str, Any]]:
            return list(self._sync.find(query, proj, skip=n_skip or 0, limit=n_limit or 0,
                                        sort=order))

        cursor = MemoryCursor(fetch)
        cursor._sort, cursor._skip, cursor._limit = _keys(sort), skip or 0, limit or 0
        return cursor

    async def find_one(self, filter: Any = None, *args: Any, **kwargs: Any) -> Any:
        if filter is not None and not isinstance(filter, Mapping):
            filter = {"_id": filter}
        docs = await self.find(filter, *args, **kwargs).limit(1).to_list()
        return docs[0] if docs else None

    async def count_documents(self, filter: Any, session: Any = None, **kwargs: Any) -> int:
        await _round_trip()
        with _LOCK:
            return int(self._sync.count_documents(_wire(filter), **_unsession(kwargs, "skip", "limit")))

    async def estimated_document_count(self, **kwargs: Any) -> int:
        return await self.count_documents({})

    async def distinct(self, key: str, filter: Any = None, session: Any = None, **kwargs: Any) -> list[Any]:
        await _round_trip()
        with _LOCK:
            return list(self._sync.distinct(str(key), _wire(filter)))

    async def aggregate(self, pipeline: list[Any], session: Any = None, **kwargs: Any) -> MemoryCursor:
        await _round_trip()
        with _LOCK:
            docs = list(self._sync.aggregate(_wire(list(pipeline))))
        return MemoryCursor(None, docs)

    def _create_index(self, keys: Any, options: dict[str, Any]) -> str:
        key = _keys(keys) or []
        opts = {k: v for k, v in _wire(options).items() if v is not None}
        name = str(opts.pop("name", None) or "_".join(f"{k}_{d}" for k, d in key))
        compared = ("unique", "sparse", "partialFilterExpression", "expireAfterSeconds")
        wanted = {k: opts[k] for k in compared if opts.get(k)}
        old = self._sync.index_information().get(name)
        if old is not None:
            if list(old["key"]) == key and {k: old[k] for k in compared if old.get(k)} == wanted:
                return name  # already there, as on the server (also: app restart on a filled db)
            raise OperationFailure(f"An existing index has the same name as the requested index: {name}", 86)
        partial = opts.get("partialFilterExpression")
        if not (opts.get("unique") and partial):
            return str(self._sync.create_index(key, name=name, **opts))
        # mongomock checks existing documents for uniqueness without the partial filter:
        # create it non-unique, check the filtered documents ourselves, then mark it unique.
        self._sync.create_index(key, name=name, **{k: v for k, v in opts.items() if k != "unique"})
        seen: set[str] = set()
        for doc in self._sync.find(partial):
            sig = repr([_dotted(doc, k) for k, _ in key])
            if sig in seen:
                self._sync.drop_index(name)
                raise DuplicateKeyError(f"E11000 duplicate key error collection: {self.full_name} "
                                        f"index: {name}", 11000)
            seen.add(sig)
        self._sync._store.indexes[name]["unique"] = True  # mongomock 4.3.0 internals
        return name

    async def create_index(self, keys: Any, session: Any = None, **kwargs: Any) -> str:
        await _round_trip()
        with _LOCK:
            return self._create_index(keys, {k: v for k, v in kwargs.items() if k != "comment"})

    async def create_indexes(self, indexes: list[ops.IndexModel], session: Any = None,
                             **kwargs: Any) -> list[str]:
        await _round_trip()
        with _LOCK:
            out = []
            for model in indexes:
                doc = dict(model.document)
                out.append(self._create_index(list(doc.pop("key").items()), doc))
            return out

    async def index_information(self, session: Any = None, **kwargs: Any) -> dict[str, Any]:
        await _round_trip()
        with _LOCK:
            info = self._sync.index_information()
        return info or {"_id_": {"key": [("_id", 1)], "v": 2}}

    async def list_indexes(self, session: Any = None, **kwargs: Any) -> MemoryCursor:
        info = await self.index_information()
        docs = [dict(v, key=dict(v["key"]), name=k) for k, v in info.items()]
        return MemoryCursor(None, docs)

    async def drop_index(self, index_or_name: Any, session: Any = None, **kwargs: Any) -> None:
        await _round_trip()
        name = index_or_name if isinstance(index_or_name, str) else \
            "_".join(f"{k}_{d}" for k, d in _keys(index_or_name) or [])
        with _LOCK:
            self._sync.drop_index(name)

    async def drop_indexes(self, session: Any = None, **kwargs: Any) -> None:
        await _round_trip()
        with _LOCK:
            self._sync.drop_indexes()

    async def drop(self, session: Any = None, **kwargs: Any) -> None:
        await self.database.drop_collection(self.name)


def _dotted(doc: Mapping[str, Any], path: str) -> Any:
    value: Any = doc
    for part in path.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


class MemoryDatabase:
    """pymongo ``AsyncDatabase`` subset."""

    def __init__(self, client: MemoryMongoClient, name: str) -> None:
        self.client = client
        self.name = name

    def __getitem__(self, name: str) -> MemoryCollection:
        return MemoryCollection(self, name)

    def __getattr__(self, name: str) -> MemoryCollection:
        if name.startswith("_"):
            raise AttributeError(name)
        return MemoryCollection(self, name)

    def get_collection(self, name: str, *args: Any, **kwargs: Any) -> MemoryCollection:
        return MemoryCollection(self, name)

    def with_options(self, *args: Any, **kwargs: Any) -> MemoryDatabase:
        return self

    async def list_collection_names(self, *args: Any, **kwargs: Any) -> list[str]:
        await _round_trip()
        with _LOCK:
            return list(_store()[self.name].list_collection_names())

    async def create_collection(self, name: str, *args: Any, **kwargs: Any) -> MemoryCollection:
        if name in await self.list_collection_names():
            raise CollectionInvalid(f"collection {name} already exists")
        with _LOCK:
            _store()[self.name].create_collection(name)
        return MemoryCollection(self, name)

    async def drop_collection(self, name_or_collection: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        await _round_trip()
        name = getattr(name_or_collection, "name", name_or_collection)
        with _LOCK:
            _store()[self.name].drop_collection(name)
        return {"ok": 1.0}

    async def command(self, command: Any, value: Any = 1, *args: Any, **kwargs: Any) -> dict[str, Any]:
        await _round_trip()
        name = command if isinstance(command, str) else next(iter(command))
        lowered = name.lower()
        if lowered == "buildinfo":
            parts = [int(p) for p in _SERVER_VERSION.split(".")]
            return {"version": _SERVER_VERSION, "versionArray": [*parts, 0], "ok": 1.0}
        if lowered in ("ping", "collmod", "endsessions"):
            return {"ok": 1.0}
        if lowered in ("hello", "ismaster"):
            return {"isWritablePrimary": True, "ismaster": True, "maxWireVersion": 21, "ok": 1.0}
        raise OperationFailure(f"no such command: '{name}'", 59)


class MemoryMongoClient:
    """Drop-in for ``pymongo.AsyncMongoClient``; every instance shares the process-wide store."""

    def __init__(self, host: Any = None, port: Any = None, *args: Any, **kwargs: Any) -> None:
        self.host = host if isinstance(host, str) else "mongodb://memory"
        tail = self.host.split("://", 1)[-1]
        path = tail.split("/", 1)[1].split("?", 1)[0] if "/" in tail else ""
        self._default_db = path or None
        self._closed = False

    def __getitem__(self, name: str) -> MemoryDatabase:
        return MemoryDatabase(self, name)

    def __getattr__(self, name: str) -> MemoryDatabase:
        if name.startswith("_"):
            raise AttributeError(name)
        return MemoryDatabase(self, name)

    def get_database(self, name: str | None = None, *args: Any, **kwargs: Any) -> MemoryDatabase:
        return self.get_default_database(name) if name is None else MemoryDatabase(self, name)

    def get_default_database(self, default: str | None = None, *args: Any, **kwargs: Any) -> MemoryDatabase:
        name = self._default_db or default
        if name is None:
            raise pymongo.errors.ConfigurationError("No default database name defined or provided.")
        return MemoryDatabase(self, name)

    def start_session(self, *args: Any, **kwargs: Any) -> MemorySession:
        return MemorySession(self)

    async def server_info(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return await self.admin.command("buildInfo")

    async def list_database_names(self, *args: Any, **kwargs: Any) -> list[str]:
        await _round_trip()
        with _LOCK:
            return list(_store().list_database_names())

    async def drop_database(self, name_or_database: Any, *args: Any, **kwargs: Any) -> None:
        await _round_trip()
        with _LOCK:
            _store().drop_database(getattr(name_or_database, "name", name_or_database))

    async def aconnect(self) -> None:
        await _round_trip()

    async def close(self) -> None:
        self._closed = True  # the shared store outlives clients, like a server does

    async def __aenter__(self) -> MemoryMongoClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def install() -> None:
    """Make ``pymongo.AsyncMongoClient`` (and modules that already imported it) the stand-in."""
    pymongo.AsyncMongoClient = MemoryMongoClient  # type: ignore[misc,assignment]
    for module_name in ("pymongo.asynchronous.mongo_client", "beanie.odm.utils.init",
                        "beanie.migrations.database"):
        module = sys.modules.get(module_name)
        if module is not None and hasattr(module, "AsyncMongoClient"):
            module.AsyncMongoClient = MemoryMongoClient  # type: ignore[attr-defined]


def reset() -> None:
    """Forget every database (a fresh, empty server)."""
    global _engine
    with _LOCK:
        _engine = None


def states_collection(database_name: str | None = None) -> MemoryCollection:
    """Upstream's State collection (default database: env MONGO_DATABASE_NAME, as upstream)."""
    name = database_name or os.environ.get("MONGO_DATABASE_NAME", "exosphere-state-manager")
    return MemoryMongoClient()[name][STATES_COLLECTION]


def state_documents(database_name: str | None = None) -> list[dict[str, Any]]:
    """Synchronous snapshot of every State document (safe to call from any thread)."""
    with _LOCK:
        return list(states_collection(database_name)._sync.find({}))
