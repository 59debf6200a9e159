"""``python -m sdd_plugin.cli`` = the ``sdd`` command."""

import sys

from . import main

sys.exit(main())
