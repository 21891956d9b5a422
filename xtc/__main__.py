"""``python -m xtc`` is the ``xtc`` command."""

import sys

from xtc.cli import main

sys.exit(main())
