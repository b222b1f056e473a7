"""``python -m exo_otel``: see `exo_otel.cli`."""

import sys

from exo_otel.cli import main

sys.exit(main())
