"""Drift: every patch target of the state manager side is in upstream 0.0.3, with the parameters expected."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from exo_otel.server.instrumentor import PATCHES
from helpers import HELPERS_DIR
from helpers.upstream_harness import server_python, state_manager_source
from helpers.upstream_side import SIDE_PIP
from helpers.upstream_sm import require_upstream

pytestmark = pytest.mark.upstream
PROBE = HELPERS_DIR / "upstream_drift_probe.py"


@pytest.mark.timeout(900)
def test_every_patch_target_is_in_upstream_and_patched_before_and_after_import() -> None:
    require_upstream()
    python = str(server_python(SIDE_PIP.split()))
    source = state_manager_source()
    assert (source / "app" / "main.py").is_file(), source
    probe = subprocess.run(
        [python, str(PROBE)],
        capture_output=True,
        text=True,
        cwd=source,
        timeout=120,
        env={
            **os.environ,
            "STATE_MANAGER_SECRET": "drift",
            "PYTHONPATH": str(source),
            "MONGO_URI": "mongodb://127.0.0.1:1",
            "SECRETS_ENCRYPTION_KEY": "YTNhM2EzYTNhM2EzYTNhM2EzYTNhM2EzYTNhM2EzYTM=",
        },
    )
    assert probe.returncode == 0, probe.stderr[-3000:]
    result = json.loads(probe.stdout.strip().splitlines()[-1])
    print(f"\n[drift] {len(PATCHES)} targets: {result}")
    assert result["problems"] == []
    assert result["hooked"] == [True] * len(PATCHES)
    assert result["after_uninstrument"] == [False] * len(PATCHES)
    assert result["in_place"] == [True] * len(PATCHES)
