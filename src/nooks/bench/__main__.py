"""``python -m nooks.bench xpc|fs|web [--json PATH] [--quick]``."""

from __future__ import annotations

import sys

from nooks.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
