"""``python -m nooks.bench xpc|fs|web [--json PATH] [--quick]``."""

from __future__ import annotations

import sys

from nooks.argcheck import Parser
from nooks.bench import command


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m nooks.bench", description="run a nooks benchmark")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    command.add_parser(sub)
    args = p.parse_args(["bench", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
