"""Where to look at a run's trace: its Jaeger page, the Grafana runs dashboard, Grafana Explore."""

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
RUNS_DASHBOARD_UID: Final = "exosphere-runs"
"""The uid of the runs dashboard that deploy/jaeger provisions (its ``run_id`` box lists the run)."""


@dataclass(frozen=True)
class RunLinks:
    """A run's trace id and the two places to open it."""

    run_id: str
    trace_id: str
    jaeger: str
    grafana: str
    """The runs dashboard at this run: short enough to click in a terminal."""
    explore: str
    """Grafana Explore on the trace itself."""


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


def grafana_dashboard_url(
    run_id: str, base: str | None = None, dashboard_uid: str = RUNS_DASHBOARD_UID
) -> str:
    """The Grafana runs dashboard showing this run (its traces in Tempo, the metrics around it).

    Args:
        run_id: the run id as Exosphere prints it.
        base: Grafana's base URL; ``$EXO_OTEL_GRAFANA_URL`` or http://localhost:3000 when None.
        dashboard_uid: the dashboard's uid.

    Raises:
        ValueError: ``run_id`` is empty.
    """
    base_url = _base(EXO_OTEL_GRAFANA_URL, DEFAULT_GRAFANA_URL, base)
    return f"{base_url}/d/{dashboard_uid}?var-run_id={urllib.parse.quote(_checked(run_id), safe='')}"


def grafana_explore_url(
    run_id: str, base: str | None = None, datasource_uid: str = TEMPO_DATASOURCE_UID
) -> str:
    """A Grafana Explore view whose Tempo query is the run's trace id.

    The pane state is the least Grafana needs (it fills in the time range, which a trace id
    lookup ignores), so the link stays as short as Explore allows.

    Args:
        run_id: the run id as Exosphere prints it.
        base: Grafana's base URL; ``$EXO_OTEL_GRAFANA_URL`` or http://localhost:3000 when None.
        datasource_uid: the Tempo datasource's uid.

    Raises:
        ValueError: ``run_id`` is empty.
    """
    query = {"refId": "A", "queryType": "traceql", "query": trace_id(run_id)}
    panes = {"t": {"datasource": datasource_uid, "queries": [query]}}
    params = urllib.parse.urlencode(
        {"schemaVersion": "1", "panes": json.dumps(panes, separators=(",", ":"))}, safe=":,"
    )
    return f"{_base(EXO_OTEL_GRAFANA_URL, DEFAULT_GRAFANA_URL, base)}/explore?{params}"


def run_links(run_id: str, jaeger_base: str | None = None, grafana_base: str | None = None) -> RunLinks:
    """The trace id and the URLs of a run (bases as in `jaeger_url` and `grafana_dashboard_url`).

    Raises:
        ValueError: ``run_id`` is empty.
    """
    return RunLinks(
        run_id=run_id,
        trace_id=trace_id(run_id),
        jaeger=jaeger_url(run_id, jaeger_base),
        grafana=grafana_dashboard_url(run_id, grafana_base),
        explore=grafana_explore_url(run_id, grafana_base),
    )
