"""Every `vlmkd` command the README, the docs and the recipe comments show parses with the real CLI.

A documented command must name an existing subcommand and options, a config file that exists (when it is one of
`configs/`), and dotted overrides that are real config fields with values of the right type. This catches the docs
drifting from the code, as when the README listed `vlmkd predict --classes` before predict had the flag. Nothing
runs: the commands are only parsed, and their overrides loaded into a Config.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from vlmkd.cli import build_parser
from vlmkd.config import load_config
from vlmkd.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
DOCS = ["README.md", "docs/walkthrough.md", "docs/recipes.md", "benchmarks/README.md"]
VAR = re.compile(r"\$\{?\w+\}?|\$\(.*?\)")  # shell variables and substitutions: placeholders here


def _code_lines(text: str) -> list[str]:
    """Lines of the fenced code blocks, continuation lines joined."""
    out, inside, buf = [], False, ""
    for line in text.splitlines():
        if line.strip().startswith("```"):
            inside, buf = not inside, ""
            continue
        if not inside:
            continue
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        out.append(buf + line)
        buf = ""
    return out


def _comment_lines(text: str) -> list[str]:
    """The usage examples in a recipe's comments: the text from `vlmkd <command>` on."""
    out = []
    for line in text.splitlines():
        m = re.match(r"\s*#.*?(?:^|\s)(vlmkd\s+[a-z].*)$", line)
        if m:
            out.append(m.group(1).removesuffix("."))  # the end of the comment's sentence
    return out


def _documented() -> list[tuple[str, list[str]]]:
    """(where, tokens after `vlmkd`) for every documented invocation."""
    found = []
    sources = [(d, _code_lines((REPO / d).read_text("utf-8"))) for d in DOCS]
    sources += [
        (str(p.relative_to(REPO)), _comment_lines(p.read_text("utf-8")))
        for p in sorted((REPO / "configs").rglob("*.yaml"))
    ]
    for where, lines in sources:
        for line in lines:
            try:
                tokens = shlex.split(line, comments=True)
            except ValueError:  # not shell (e.g. a Python line with an apostrophe)
                continue
            segment: list[str] = []
            for tok in [*tokens, "&&"]:
                if tok not in ("&&", "||", ";", "|"):
                    segment.append(tok.rstrip(";"))
                    if not tok.endswith(";"):
                        continue
                for i, t in enumerate(
                    segment
                ):  # `vlmkd ...`, `python -m vlmkd ...`, `torchrun ... -m vlmkd ...`
                    if t == "vlmkd" and (i == 0 or segment[i - 1] == "-m" or "=" in segment[i - 1]):
                        args = segment[i + 1 :]
                        if not any("..." in a for a in args):  # an elided sketch, not a command
                            found.append((f"{where}: {line.strip()}", args))
                        break
                segment = []
    return found


COMMANDS = _documented()


def test_the_docs_show_commands():
    # a broken extractor would make the test below vacuous
    assert len(COMMANDS) > 60
    subcommands = {tokens[0] for _, tokens in COMMANDS if tokens}
    assert {
        "describe",
        "embed",
        "classtext",
        "teach",
        "train",
        "eval",
        "export",
        "predict",
        "demo",
    } <= subcommands


@pytest.mark.parametrize("where,tokens", COMMANDS, ids=[w[:90] for w, _ in COMMANDS])
def test_documented_command_parses(where, tokens, capsys):
    # `$NOVEL` stands for a whole override: dropped; RUN, CONFIG, DIR stand for a path: kept as one
    tokens = [t for t in tokens if not t.startswith("$")]
    try:
        args, extra = build_parser().parse_known_args(tokens)
    except SystemExit:
        pytest.fail(f"{where}\n  does not parse: {capsys.readouterr().err.strip().splitlines()[-1]}")
    overrides = [*(getattr(args, "overrides", None) or []), *extra]
    bad = [e for e in extra if "=" not in e or e.startswith("-")]
    assert not bad, f"{where}\n  unrecognized arguments: {bad}"
    assert getattr(args, "command", None), f"{where}\n  names no subcommand"
    config = getattr(args, "config", None)
    if config and config.startswith("configs/"):
        assert (REPO / config).is_file(), f"{where}\n  {config} does not exist"
    # against the command's own recipe where it is one of ours; a user's recipe may define other entries
    recipe = REPO / config if config and (REPO / config).is_file() else None
    for ov in overrides:
        try:
            load_config(recipe, [VAR.sub("x", ov)])
        except ConfigError as e:
            if recipe is None and re.search(r"there is no \w+ entry", str(e)):
                continue
            pytest.fail(f"{where}\n  override {ov!r}: {e}")
