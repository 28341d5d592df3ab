"""``python -m nooks ...``: the same as the ``nooks`` command."""

import sys

from nooks.cli import main

sys.exit(main())
