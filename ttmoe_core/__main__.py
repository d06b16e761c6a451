"""``python -m ttmoe_core``: see ``ttmoe_core.cli``."""

import sys

from .cli import main

sys.exit(main())
