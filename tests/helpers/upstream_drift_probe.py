"""Run by the drift test with the upstream server venv's python, in the upstream state-manager folder.

Prints one JSON line: the patch targets' problems, and which targets were wrapped when the
instrumentor was loaded before the app was imported, after uninstrument, and when loaded after.
"""

from __future__ import annotations

import json

from exo_otel.server.instrumentor import PATCHES, StateManagerInstrumentor, check_targets


def wrapped() -> list[bool]:
    return [patch.is_wrapped() for patch in PATCHES]


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
