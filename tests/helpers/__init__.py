"""What the tests share: servers, receivers, graphs, loads, span checks (``helpers.<module>``).

The folder above this package (``tests/``) is on ``sys.path`` in every test run (pytest puts the root
conftest's folder there) and in every subprocess the tests start (their ``PYTHONPATH``).
"""

from pathlib import Path

HELPERS_DIR = Path(__file__).resolve().parent
TESTS_DIR = HELPERS_DIR.parent
REPO_ROOT = TESTS_DIR.parent
