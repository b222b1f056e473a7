"""Where to look at a run's trace: its Jaeger page and a Grafana Explore (Tempo) view, from the run id."""

from __future__ import annotations

import json
import os
import urllib.parse
from dataclasses import dataclass
from typing import Final

from exo_otel.core.ids import format_trace_id

EXO_OTEL_JAEGER_URL: Final = "EXO_OTEL_JAEGER_URL"
"""Base URL of the Jaeger UI; default ``http://localhost:16686`` (the deploy/jaeger stack)."""

EXO_OTEL_GRAFANA_URL: Final = "EXO_OTEL_GRAFANA_URL"
"""Base URL of Grafana; default ``http://localhost:3000`` (the deploy/jaeger stack)."""

DEFAULT_JAEGER_URL: Final = "http://localhost:16686"
DEFAULT_GRAFANA_URL: Final = "http://localhost:3000"
TEMPO_DATASOURCE_UID: Final = "tempo"
"""The uid of the Tempo datasource that deploy/jaeger provisions in Grafana."""

# Explore opens at the trace whatever the time picker says; the range only bounds searches.
_EXPLORE_RANGE: Final = {"from": "now-1h", "to": "now"}


@dataclass(frozen=True)
class RunLinks:
    """A run's trace id and the two places to open it."""

    run_id: str
    trace_id: str
    jaeger: str
    grafana: str


def _checked(run_id: str) -> str:
    if not isinstance(run_id, str) or not run_id.strip():
        raise ValueError("a run id is needed (got an empty one)")
    return run_id


def _base(env: str, default: str, base: str | None) -> str:
    chosen = base if base is not None else (os.environ.get(env, "").strip() or default)
    return chosen.rstrip("/")


def trace_id(run_id: str) -> str:
    """The run's trace id, 32 lowercase hex digits.

    Raises:
        ValueError: ``run_id`` is empty.
    """
    return format_trace_id(_checked(run_id))


def jaeger_url(run_id: str, base: str | None = None) -> str:
    """The Jaeger UI page of the run's trace.

    Args:
        run_id: the run id as Exosphere prints it.
        base: Jaeger's base URL; ``$EXO_OTEL_JAEGER_URL`` or http://localhost:16686 when None.

    Raises:
        ValueError: ``run_id`` is empty.
    """
    return f"{_base(EXO_OTEL_JAEGER_URL, DEFAULT_JAEGER_URL, base)}/trace/{trace_id(run_id)}"


def grafana_explore_url(
    run_id: str, base: str | None = None, datasource_uid: str = TEMPO_DATASOURCE_UID
) -> str:
    """A Grafana Explore view whose Tempo query is the run's trace id.

    Args:
        run_id: the run id as Exosphere prints it.
        base: Grafana's base URL; ``$EXO_OTEL_GRAFANA_URL`` or http://localhost:3000 when None.
        datasource_uid: the Tempo datasource's uid.

    Raises:
        ValueError: ``run_id`` is empty.
    """
    query = {
        "refId": "A",
        "datasource": {"type": "tempo", "uid": datasource_uid},
        "queryType": "traceql",
        "query": trace_id(run_id),
    }
    panes = {"trace": {"datasource": datasource_uid, "queries": [query], "range": _EXPLORE_RANGE}}
    params = urllib.parse.urlencode(
        {"schemaVersion": "1", "panes": json.dumps(panes, separators=(",", ":")), "orgId": "1"}
    )
    return f"{_base(EXO_OTEL_GRAFANA_URL, DEFAULT_GRAFANA_URL, base)}/explore?{params}"


def run_links(run_id: str, jaeger_base: str | None = None, grafana_base: str | None = None) -> RunLinks:
    """The trace id and both URLs of a run (bases as in `jaeger_url` and `grafana_explore_url`).

    Raises:
        ValueError: ``run_id`` is empty.
    """
    return RunLinks(
        run_id=run_id,
        trace_id=trace_id(run_id),
        jaeger=jaeger_url(run_id, jaeger_base),
        grafana=grafana_explore_url(run_id, grafana_base),
    )
