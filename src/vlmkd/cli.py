"""The `vlmkd` command. Each module in `vlmkd.commands` adds its subcommands with `register(subparsers)`.

User mistakes (`VlmkdError`) print one line to stderr and exit with code 2; no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys

from vlmkd import __version__
from vlmkd.errors import VlmkdError
from vlmkd.utils.logging import setup_console_logging

# Order in which stages are listed by `vlmkd --help`; modules not listed here follow alphabetically.
_ORDER = [
    "data",
    "prepare",
    "describe",
    "classtext",
    "embed",
    "teach",
    "teacher",
    "train",
    "eval",
    "export",
    "predict",
    "classes",
    "run",
    "demo",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vlmkd",
        description="Distill large vision-language models into small, fast vision models.\n"
        "Pipeline: data -> describe -> embed / classtext / teach -> train -> eval -> export / predict.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"vlmkd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    import vlmkd.commands as pkg

    names = [m.name for m in pkgutil.iter_modules(pkg.__path__) if not m.name.startswith("_")]
    names.sort(key=lambda n: (_ORDER.index(n) if n in _ORDER else len(_ORDER), n))
    for name in names:
        importlib.import_module(f"vlmkd.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    setup_console_logging()
    parser = build_parser()
    # Overrides may come after options (`train CFG --run-dir R a.b=1`): collect them from the leftovers.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = [*(args.overrides or []), *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except VlmkdError as e:
        print(f"vlmkd {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vlmkd {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except FileNotFoundError as e:
        if os.environ.get("VLMKD_DEBUG"):
            raise
        print(f"vlmkd {args.command}: error: file not found: {e.filename}; check the path", file=sys.stderr)
        return 2
