import sys

from lienthong.cli import main

sys.exit(main())
