"""``python3 -m swiftmoe.report``: the same as ``swiftmoe report``."""

import sys

from swiftmoe.report.cli import main

sys.exit(main())
