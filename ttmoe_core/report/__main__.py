"""``python -m ttmoe_core.report [--budget small|full] ...``: the ``report`` command on its own.

An entry point, not part of the library: it may import the command line (``cli.report``).
"""

import sys

from ..cli.report import main

sys.exit(main())
