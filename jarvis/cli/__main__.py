"""``python -m jarvis.cli``."""

import sys

from . import main

sys.exit(main())
