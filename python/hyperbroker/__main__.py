"""``python -m hyperbroker``: the command line (see :mod:`hyperbroker.cli`)."""

import sys

from .cli import main

sys.exit(main())
