"""Arguments shared by the stage commands."""

from __future__ import annotations

import argparse


def add_config_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    """The common `CONFIG [key=value ...]` positional arguments."""
    p.add_argument("config", nargs=None if required else "?", help="YAML recipe (see configs/)")
    p.add_argument(
        "overrides", nargs="*", help="dotted overrides, e.g. train.epochs=3 losses.cls.name=balanced_softmax"
    )
