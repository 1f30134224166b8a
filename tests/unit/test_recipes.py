"""Every shipped recipe under configs/ loads, uses registered losses with valid options, and starts with a
big_vision-style header whose `vlmkd ...` command lines parse with the real CLI."""

from __future__ import annotations

import argparse
import dataclasses
import re
import shlex
import typing
from pathlib import Path

import pytest

from vlmkd.cli import build_parser
from vlmkd.config import Config, LossTerm, load_config
from vlmkd.engine.selection import check_select_on
from vlmkd.errors import ConfigError
from vlmkd.losses import LOSSES
from vlmkd.registry import check_kwargs

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"
RECIPES = sorted(CONFIGS.rglob("*.yaml"))
IDS = [str(p.relative_to(CONFIGS)) for p in RECIPES]

# A header command: optional "Label:" (capitalised words), optional VAR=value prefixes, optional
# `torchrun ... -m`, then `vlmkd <subcommand> ...`.
COMMAND = re.compile(
    r"^(?:[A-Z][A-Za-z -]*:\s+)?(?:[A-Za-z_]\w*=\S*\s+)*(?:torchrun\s+(?:\S+\s+)*?-m\s+)?(vlmkd\s+[a-z].*)$"
)


def header(path: Path) -> list[str]:
    """The leading comment block, '#' stripped, backslash continuations joined."""
    lines: list[str] = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        if not raw.startswith("#"):
            break
        text = raw[1:].strip()
        if lines and lines[-1].endswith("\\"):
            lines[-1] = lines[-1][:-1].rstrip() + " " + text
        else:
            lines.append(text)
    return lines


def header_commands(path: Path) -> list[str]:
    return [m.group(1) for line in header(path) if (m := COMMAND.match(line))]


@pytest.fixture(scope="module")
def cli() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return parser, dict(sub.choices)


def test_recipes_are_shipped():
    names = set(IDS)
    for key in ("imagenet_lt", "places_lt", "inat2018", "cifar100_lt"):
        assert f"vlmkd/{key}.yaml" in names
    for key in ("cub200", "cars", "flowers102", "food101", "sun397", "tiered_imagenet"):
        assert f"ood/{key}.yaml" in names


@pytest.mark.parametrize("path", RECIPES, ids=IDS)
def test_recipe_loads_with_registered_losses(path):
    cfg = load_config(path)  # unknown keys and wrong types raise ConfigError
    assert cfg.losses, f"{path.name}: no loss terms"
    for term, spec in cfg.losses.items():
        assert spec.name in LOSSES, f"{path.name}: losses.{term}.name {spec.name!r} is not a registered loss"
        # options other than the injected class counts must be real constructor arguments
        check_kwargs(LOSSES.get(spec.name), dict(spec.args), f"{path.name}: losses.{term}")
    check_select_on(cfg.eval.select_on)  # no recipe selects its model on the split it reports


@pytest.mark.parametrize("path", RECIPES, ids=IDS)
def test_recipe_header_has_command_and_expectation(path):
    text = "\n".join(header(path))
    assert text, f"{path.name}: no header comment"
    assert header_commands(path), f"{path.name}: the header names no `vlmkd ...` command line"
    assert re.search(r"\bexpected\b", text, re.IGNORECASE), (
        f"{path.name}: the header states no expected metric"
    )


LOSS_TERM_FIELDS = {f.name for f in dataclasses.fields(LossTerm)}


def valid_key(keys: list[str]) -> bool:
    """Whether a dotted override names a real config field (loss term names and loss args are free-form)."""
    if keys[0] == "losses":  # losses.<term>.<name|weight|args>[.<arg>]
        return len(keys) >= 3 and keys[2] in LOSS_TERM_FIELDS and (len(keys) == 3 or keys[2] == "args")
    tp: typing.Any = Config
    for k in keys:
        if not dataclasses.is_dataclass(tp):
            return False
        hints = typing.get_type_hints(tp)
        if k not in hints:
            return False
        tp = hints[k]
    return True


def check_override(config: Path, override: str) -> None:
    key, _, value = override.partition("=")
    assert valid_key(key.split(".")), f"{config.name}: override {override!r} names no config field"
    if "$" not in value:  # concrete values must also have the right type
        try:
            load_config(config, [override])
        except ConfigError as e:
            pytest.fail(f"{config.name}: override {override!r}: {e}")


@pytest.mark.parametrize("path", RECIPES, ids=IDS)
def test_header_commands_parse_with_the_cli(path, cli, capsys):
    parser, subcommands = cli
    for command in header_commands(path):
        argv = shlex.split(command.rstrip("&").strip(), comments=True)[1:]  # a trailing "# ..." is a comment
        assert argv[0] in subcommands, f"{path.name}: `vlmkd {argv[0]}` is not a vlmkd command"
        # shell expansions ($R, $NOVEL) stand for values the user supplies
        argv = [a for a in argv if not a.startswith("$")]
        try:
            args, extra = parser.parse_known_args(argv)
        except SystemExit:
            pytest.fail(f"{path.name}: `{command}` does not parse: {capsys.readouterr().err.strip()}")
        overrides = [*(getattr(args, "overrides", None) or []), *extra]
        if extra:
            assert hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra), (
                f"{path.name}: `{command}`: unrecognized arguments {extra}"
            )
        config = path
        if getattr(args, "config", None):
            config = REPO / args.config
            assert config.is_file(), f"{path.name}: `{command}` names a missing config {args.config!r}"
        for ov in overrides:
            check_override(config, ov)
