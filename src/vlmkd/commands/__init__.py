"""CLI subcommands: one module per stage, each with `register(subparsers)`. Discovered by `vlmkd.cli`."""
