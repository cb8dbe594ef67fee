"""``python -m catalog``: see :mod:`catalog.cli`."""

import sys

from catalog.cli import main

sys.exit(main())
