"""1 process vs `torchrun --nproc_per_node 2` on the configs `vlmkd demo --quick` itself writes: every method of the
demo (long-tail, OOD with CoOp, combined) and every zero-weight ablation of docs/recipes.md, plus a `head=both`
recipe with an explicit embed_dim. Also: a CoOp run killed mid-epoch and resumed equals the uninterrupted run, and
the exported best epoch carries that epoch's learned class texts.

Why the first steps: these runs amplify float summation order (one process at 1 vs 2 threads differs by 3.8e-4
after 5 steps on the demo's `vlmkd` config, issue 18), so a weight comparison late in a run cannot tell a real
DDP difference from noise. Two optimizer steps are past the first update (a wrong gradient shows there at the
size of the learning rate times the error, ~1e-3 for a rank-local CoOp context) and before the amplification: the
measured 1-vs-2-process differences after 2 steps are float rounding (listed in the issue 18 note).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from helpers_dist import dist_env, torchrun
from vlmkd.cli import main
from vlmkd.compose import build_run
from vlmkd.config import load_config
from vlmkd.utils.checkpoint_io import load_checkpoint

pytestmark = pytest.mark.slow
STEPS = ["train.max_steps=2", "train.epochs=1", "eval.every=0", "eval.generalized=false"]
TOL = 2e-5  # float rounding after 2 steps; a rank-local gradient is ~1e-3 here


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory) -> dict[str, Path]:
    """The demo's own run folders (name -> config.yaml), from one `vlmkd demo --quick` (seed 0)."""
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    runs = {p.parent.name.removesuffix("-s0"): p for p in sorted((out / "runs").glob("*-s0/config.yaml"))}
    assert len(runs) >= 12, sorted(runs)
    return runs


def rel_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Largest difference, relative to the tensor's scale where that is above 1 (BN running variances)."""
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max() / max(1.0, a[k].abs().max())) for k in a)


def learned(run: Path) -> dict[str, torch.Tensor]:
    """The run's learned class-text matrix (CoOp), as the exported student.json carries it."""
    meta = json.loads((run / "student.json").read_text())
    mat = meta["eval"].get("class_text_learned", {}).get("matrix")
    return {} if mat is None else {"class_text": torch.tensor(mat)}


def run_both(config: Path, tmp: Path, *overrides: str) -> tuple[float, float]:
    """(weights, learned texts) differences between 1 process and 2 processes at the same global batch; also
    prints the config's float-order floor, 1 process at 2 vs 1 threads, next to them."""
    one, one_t1, two = tmp / "one", tmp / "one_t1", tmp / "two"
    args = [*STEPS, "train.tensorboard=false", *overrides]
    threads = torch.get_num_threads()
    assert main(["train", str(config), "--run-dir", str(one), *args]) == 0
    torch.set_num_threads(1)
    try:
        assert main(["train", str(config), "--run-dir", str(one_t1), *args]) == 0
    finally:
        torch.set_num_threads(threads)
    torchrun(2, ["train", str(config), "--run-dir", str(two), *args], timeout=600)
    w = rel_diff(load_file(one / "student.safetensors"), load_file(two / "student.safetensors"))
    floor = rel_diff(load_file(one / "student.safetensors"), load_file(one_t1 / "student.safetensors"))
    a, b = learned(one), learned(two)
    t = rel_diff(a, b) if a else 0.0
    t_floor = rel_diff(a, learned(one_t1)) if a else 0.0
    print(
        f"{config.parent.name} {' '.join(overrides)}: weights {w:.2e} (threads floor {floor:.2e}), "
        f"learned class texts {t:.2e} (floor {t_floor:.2e})"
    )
    return w, t


METHODS = [
    "balanced_softmax",
    "balanced_softmax+kd",
    "balanced_softmax+text",
    "vlmkd",
    "ood-vl_cls",
    "ood-vl_cls+mse",
    "ood-vl_cls+im_cst",
    "ood-vl_cls+im_cst+vlprox",
    "ood-vl_cls+im_cst+coop",
    "combined-combined",
    # the teaching views (issue 21): replayed views of the cached teacher, and the live teacher
    "balanced_softmax+kd@replay",
    "balanced_softmax+kd@live",
    "ood-vl_cls+im_cst@replay",
]


@pytest.mark.parametrize("method", METHODS)
def test_two_processes_equal_one_on_the_demo_config(demo_runs, tmp_path, method):
    w, t = run_both(demo_runs[method], tmp_path)
    assert w < TOL and t < TOL


# docs/recipes.md's ablations, one override each, on the demo configs they ablate; and the head=both recipe with
# an explicit embed_dim (configs/vlmkd/imagenet_lt.yaml's shape) whose unread projection head crashed DDP
ABLATIONS = [
    ("vlmkd", ["losses.text.weight=0"]),
    ("vlmkd", ["losses.kd.weight=0"]),
    ("vlmkd", ["losses.text.weight=0", "model.embed_dim=384"]),
    ("ood-vl_cls+im_cst+vlprox", ["losses.im_cst.weight=0", "losses.vlprox.weight=0"]),
    ("combined-combined", ["losses.text.weight=0", "losses.kd.weight=0"]),
]


@pytest.mark.parametrize(("method", "overrides"), ABLATIONS, ids=[" ".join(o) for _, o in ABLATIONS])
def test_zero_weight_ablations_train_under_torchrun(demo_runs, tmp_path, method, overrides):
    w, t = run_both(demo_runs[method], tmp_path, *overrides)
    assert w < TOL and t < TOL


def test_coop_killed_mid_epoch_resumes_to_the_uninterrupted_run(demo_runs, tmp_path):
    cfg = load_config(
        demo_runs["ood-vl_cls+im_cst+coop"],
        ["train.max_steps=6", "train.checkpoint_every=1", "eval.every=0", "eval.generalized=false"],
    )
    build_run(cfg, tmp_path / "full").fit()
    run = build_run(cfg, tmp_path / "cut")
    real_step, calls = run.trainer._step, {"n": 0}

    def crashing_step(batch):
        calls["n"] += 1
        if calls["n"] == 4:  # after the third step's checkpoint: mid-epoch
            raise KeyboardInterrupt
        return real_step(batch)

    run.trainer._step = crashing_step
    with pytest.raises(KeyboardInterrupt):
        run.fit()
    assert load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")["batch_in_epoch"] == 3
    build_run(cfg, tmp_path / "cut", resume=True).fit()
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert rel_diff(load_file(full / "student.safetensors"), load_file(cut / "student.safetensors")) < 1e-6
    assert rel_diff(learned(full), learned(cut)) < 1e-6


def test_the_exported_best_epoch_carries_that_epochs_class_texts(demo_runs, tmp_path, monkeypatch):
    """Scripted val scores pick epoch 1 of 3: student.json's learned texts are epoch 1's, not the last epoch's."""
    import vlmkd.compose.train as composed

    cfg = load_config(
        demo_runs["ood-vl_cls+im_cst+coop"],
        [
            "train.epochs=3",
            "train.max_steps=null",
            "eval.every=1",
            "eval.generalized=false",
            "data.longtail.n_max=60",
        ],
    )
    real, scores = composed.evaluate_split, iter([0.5, 0.9, 0.3])
    contexts = []

    def scripted(model, manifests, split, cfg_, spec, *a, **k):
        m = real(model, manifests, split, cfg_, spec, *a, **k)
        if split == cfg.eval.select_on:
            contexts.append(spec.class_text["train"].copy())  # the learned texts this epoch was scored with
            m["mean_per_class"] = next(scores)
        return m

    monkeypatch.setattr(composed, "evaluate_split", scripted)
    run = build_run(cfg, tmp_path / "sel")
    summary = run.fit()
    assert summary["selected"]["epoch"] == 1 and len(contexts) >= 3
    exported = learned(tmp_path / "sel")["class_text"].numpy()
    names = json.loads((tmp_path / "sel" / "student.json").read_text())["eval"]["class_text_learned"]["names"]
    train_names = run.manifests["train"].class_names
    rows = exported[[names.index(n) for n in train_names]]
    np.testing.assert_allclose(rows, contexts[1], atol=1e-5)
    assert not np.allclose(rows, contexts[2], atol=1e-5)  # the last epoch's texts differ: the test can fail
    best = load_checkpoint(tmp_path / "sel" / "checkpoints" / "best.pt")["state"]
    assert "prompt_learner.ctx" in best


EVAL_SCRIPT = """
import json, sys
from safetensors.torch import load_file
from vlmkd.compose import build_run
from vlmkd.config import load_config
from vlmkd.eval.evaluate import evaluate_run
from vlmkd.utils.dist import get_info

run_dir, out = sys.argv[1], sys.argv[2]
cfg = load_config(run_dir + "/config.yaml")
run = build_run(cfg, run_dir + "/eval-only")  # composes the task and the process group; trains nothing
run.task.student.load_state_dict(load_file(run_dir + "/student.safetensors"))
summary = evaluate_run(run.task.student, run.manifests, cfg, run.eval_spec, run.device, shard=True)
if get_info().is_main:
    summary["generalized"].pop("score_norm", None)
    json.dump(summary, open(out, "w"), default=float)
"""


def test_generalized_evaluation_sharded_over_two_processes_equals_one(demo_runs, tmp_path):
    """The run-end evaluation, generalized zero-shot included, is sharded over the ranks (none waits idle through
    it) and gives what one process gives, on the same weights."""
    run = tmp_path / "ood"
    args = ["train.max_steps=1", "train.epochs=1", "eval.every=0", "eval.generalized=true"]
    assert main(["train", str(demo_runs["ood-vl_cls+im_cst"]), "--run-dir", str(run), *args]) == 0
    script = tmp_path / "eval_run.py"
    script.write_text(EVAL_SCRIPT)
    one = tmp_path / "one.json"
    r = subprocess.run(
        [sys.executable, str(script), str(run), str(one)], env=dist_env(), capture_output=True, timeout=600
    )
    assert r.returncode == 0, r.stderr[-3000:]
    two = tmp_path / "two.json"
    torchrun(2, [str(run), str(two)], timeout=600, entry=script)
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert a["generalized"]["calibrated"]["harmonic"] > 0  # a real calibrated result, not an empty one
    for key in ("base", "novel", "harmonic", "gamma", "calibrated"):
        assert b["generalized"][key] == pytest.approx(a["generalized"][key], abs=1e-9), key
    for split in a["splits"]:
        assert b["splits"][split]["mean_per_class"] == a["splits"][split]["mean_per_class"], split


def test_demo_config_is_what_the_demo_trained(demo_runs):
    """The configs compared above are the demo's own: its run folders, with the demo's recipe and overrides."""
    cfg = yaml.safe_load(demo_runs["ood-vl_cls+im_cst+coop"].read_text())
    assert cfg["text"]["coop"]["enabled"] is True and cfg["model"]["head"] == "embedding"
