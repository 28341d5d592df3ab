"""Entry point of a domain process: ``python -m nooks.domain CONFIG``."""

import sys

from nooks.domain.child import main

main(sys.argv)
