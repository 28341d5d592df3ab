"""``python -m nooks.bench xpc|fs|fuse|web|net [--json PATH] [--quick]``."""

from __future__ import annotations

import sys

from nooks.argcheck import Parser
from nooks.bench import command


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m nooks.bench", description="run a nooks benchmark")
    command.add_arguments(p)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
