"""Run by the drift test with the upstream server venv's python, in the upstream state-manager folder.

Prints one JSON line: the patch targets' problems, and which targets were wrapped when the
instrumentor was loaded before the app was imported, after uninstrument, and when loaded after.
"""

from __future__ import annotations

import json
import sys

from exo_otel.server.instrumentor import PATCHES, StateManagerInstrumentor, check_targets, is_ours


def wrapped() -> list[bool]:
    flags = []
    for patch in PATCHES:
        owner = sys.modules[patch.module]
        *path, name = patch.attribute.split(".")
        for part in path:
            owner = getattr(owner, part)
        flags.append(is_ours(getattr(owner, name)))
    return flags


before = StateManagerInstrumentor()
before.instrument()
import app.main  # noqa: E402,F401  (the real upstream app, imported after the hooks are registered)

result = {"problems": check_targets(), "hooked": wrapped()}
before.uninstrument()
result["after_uninstrument"] = wrapped()
after = StateManagerInstrumentor()
after.instrument()
result["in_place"] = wrapped()
after.uninstrument()
print(json.dumps(result))
