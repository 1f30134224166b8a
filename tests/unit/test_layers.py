"""The package's folders depend downward only: a test that reads every import (function-local ones included).

The layers, lowest first (a folder may import its own layer and the layers below it, never above):
    errors, registry < utils < config < data, students, losses < eval < describe < text < teachers < tasks
    < engine < export, predict < compose < commands, demo, cli
`engine/` is the loop: it receives a built task, so it imports nothing from eval, describe, text, teachers or
tasks. Same-layer folders must not import each other both ways.
"""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "vlmkd"
ORDER = [
    ["errors", "registry"],
    ["utils"],
    ["config"],
    ["data", "students", "losses"],
    ["eval"],
    ["describe"],
    ["text"],
    ["teachers"],
    ["tasks"],
    ["engine"],
    ["export", "predict"],
    ["compose"],
    ["commands", "demo", "cli", "__main__", "__init__"],
]
LAYER = {name: i for i, names in enumerate(ORDER) for name in names}
# below the engine's own layer, but the loop must not reach them: it receives the task and an evaluator
ENGINE_MAY_NOT = {"eval", "describe", "text", "teachers", "tasks"}


def _unit(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def edges() -> set[tuple[str, str, str]]:
    """(importing unit, imported unit, file) for every `vlmkd.*` import anywhere in a module."""
    out = set()
    for path in SRC.rglob("*.py"):
        src = _unit(path)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
                if node.module == "vlmkd":
                    names = [f"vlmkd.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                parts = name.split(".")
                if parts[0] == "vlmkd" and len(parts) > 1 and parts[1] != src:
                    out.add((src, parts[1], str(path.relative_to(SRC))))
    return out


def test_every_unit_has_a_layer():
    units = {_unit(p) for p in SRC.rglob("*.py")} - {"assets"}
    assert units <= set(LAYER), f"give these a layer in ORDER: {sorted(units - set(LAYER))}"


def test_no_upward_import():
    upward = sorted(f"{f}: {a} -> {b}" for a, b, f in edges() if b in LAYER and LAYER[b] > LAYER[a])
    assert not upward, "imports from a higher layer:\n" + "\n".join(upward)


def test_engine_receives_what_it_runs():
    reached = sorted(f"{f}: engine -> {b}" for a, b, f in edges() if a == "engine" and b in ENGINE_MAY_NOT)
    assert not reached, "\n".join(reached)


def test_same_layer_folders_do_not_import_each_other_both_ways():
    pairs = {(a, b) for a, b, _ in edges()}
    both = sorted(f"{a} <-> {b}" for a, b in pairs if (b, a) in pairs and a < b)
    assert not both, both


def test_the_checker_sees_function_local_imports(tmp_path):
    """The rule would be toothless if an import inside a function were invisible to it."""
    tree = ast.parse("def f():\n    from vlmkd.tasks.build import build_task\n")
    found = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert found == ["vlmkd.tasks.build"]


def module_edges() -> set[tuple[str, str]]:
    """(importing module, imported module) between vlmkd modules, function-local imports included."""
    out = set()
    for path in SRC.rglob("*.py"):
        mod = "vlmkd." + ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            is_from = isinstance(node, ast.ImportFrom) and node.module and node.level == 0
            if is_from and node.module.startswith("vlmkd."):
                out.add((mod, node.module))
    return out


def test_no_two_modules_import_each_other():
    edges_ = module_edges()
    both = sorted(f"{a} <-> {b}" for a, b in edges_ if (b, a) in edges_ and a < b)
    assert not both, both


def test_vlmkd_imports_are_at_module_level_outside_the_commands():
    """A function-local import hides a module's dependencies (and can hide a cycle). Only the command modules
    and cli.py keep theirs local: `vlmkd --help` imports every command module, and should not pay for what each
    command loads."""
    local = []
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC)
        if rel.parts[0] == "commands" or rel.name == "cli.py":
            continue
        tree = ast.parse(path.read_text(), str(path))
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("vlmkd"):
                    local.append(f"{rel}:{node.lineno}: from {node.module} import ...")
                elif isinstance(node, ast.Import) and any(a.name.startswith("vlmkd") for a in node.names):
                    local.append(f"{rel}:{node.lineno}: import ...")
    assert not local, "move these to the module's imports:\n" + "\n".join(sorted(local))
