"""``python -m curvebench``."""

import sys

from curvebench.cli import main

sys.exit(main())
