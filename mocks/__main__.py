"""``python -m mocks up ...``: see :mod:`mocks.cli`."""

import sys

from mocks.cli import main

sys.exit(main())
