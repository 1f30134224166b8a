"""End-to-end training through the real entry points: resume, DDP equivalence, CLI errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import make_image_folder
from vlmkd.cli import main
from vlmkd.compose import build_run
from vlmkd.config import load_config

ROOT = Path(__file__).resolve().parents[2]


def tiny_config(tmp_path: Path, data_root: Path, **extra) -> Path:
    cfg = {
        "data": {
            "format": "image_folder",
            "root": str(data_root),
            "image_size": 16,
            "in_chans": 3,
            "batch_size": 8,
            "eval_batch_size": 16,
            "many_threshold": 10,
            "few_threshold": 4,
        },
        "model": {"name": "cnn_tiny"},
        "optim": {"name": "sgd", "lr": 0.05, "schedule": "cosine", "warmup_epochs": 0.5},
        "train": {"epochs": 3, "output_dir": str(tmp_path / "runs"), "log_every": 1, "tensorboard": False},
        "eval": {"every": 1, "select_on": "val"},
    }
    for k, v in extra.items():
        cfg.setdefault(k, {}).update(v)
    p = tmp_path / "tiny.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


@pytest.fixture
def data16(tmp_path):
    return make_image_folder(tmp_path / "d", per_class=(16, 12, 8), size=16)


def test_train_cli_writes_run_folder(tmp_path, data16):
    cfg = tiny_config(tmp_path, data16)
    assert (
        main(["train", str(cfg), "--run-dir", str(tmp_path / "run"), "losses.cls.name=balanced_softmax"]) == 0
    )
    run = tmp_path / "run"
    for f in (
        "summary.json",
        "report.md",
        "per_class_accuracy.png",
        "training_curves.png",
        "metrics.jsonl",
        "config.yaml",
        "student.safetensors",
        "student.json",
        "checkpoints/last.pt",
    ):
        assert (run / f).is_file(), f
    assert load_config(run / "config.yaml").losses["cls"].name == "balanced_softmax"
    # vlmkd eval re-evaluates the saved student and reproduces the summary's test accuracy
    import json

    s = json.loads((run / "summary.json").read_text())
    assert main(["eval", str(run), "--out", str(tmp_path / "re.json")]) == 0
    again = json.loads((tmp_path / "re.json").read_text())
    assert again["splits"]["test"]["overall"] == pytest.approx(s["splits"]["test"]["overall"])


def crash_and_resume(tmp_path: Path, cfg, crash_at_step: int) -> None:
    """Train uninterrupted into full/, and into cut/ with a crash at `crash_at_step` then a resume; compare."""
    build_run(cfg, tmp_path / "full").fit()
    run = build_run(cfg, tmp_path / "cut")
    t = run.trainer
    calls = {"n": 0}
    real_step = t._step

    def crashing_step(batch):
        calls["n"] += 1
        if calls["n"] == crash_at_step:
            raise KeyboardInterrupt
        return real_step(batch)

    t._step = crashing_step
    with pytest.raises(KeyboardInterrupt):
        run.fit()
    build_run(cfg, tmp_path / "cut", resume=True).fit()
    a, b = (
        load_file(tmp_path / "full" / "student.safetensors"),
        load_file(tmp_path / "cut" / "student.safetensors"),
    )
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)

    def log(run):  # metrics.jsonl without wall times: the resumed log must equal the uninterrupted one
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(x).items() if k != "time"} for x in lines]

    assert [r["step"] for r in log("cut")] == [r["step"] for r in log("full")]
    for x, y in zip(log("cut"), log("full")):
        assert x.keys() == y.keys() and all(x[k] == pytest.approx(y[k], abs=1e-5) for k in x)


def test_resume_matches_uninterrupted(tmp_path, data16):
    # 4 steps per epoch: dies in epoch 2, after the step-4 checkpoint (an epoch boundary) and the step-5 log record
    cfg = load_config(tiny_config(tmp_path, data16, train={"checkpoint_every": 2}))
    crash_and_resume(tmp_path, cfg, crash_at_step=6)


def test_resume_mid_epoch_with_cpu_randomness_matches_uninterrupted(tmp_path, data16):
    """Resumes from the step-6 checkpoint, half-way through epoch 2, with dropout drawing from the CPU RNG and
    loader workers seeded per epoch: the loader must not draw its seed from the restored RNG stream."""
    cfg = tiny_config(
        tmp_path,
        data16,
        train={"checkpoint_every": 1, "epochs": 2},
        model={"drop_rate": 0.5},
        data={"num_workers": 1},
        eval={"every": 0},
    )
    crash_and_resume(tmp_path, load_config(cfg), crash_at_step=7)


def test_select_on_val_exports_the_best_epoch(tmp_path, data16, monkeypatch):
    """Scripted val scores 0.5, 0.9, 0.3: the exported student is the epoch-2 one, not the last."""
    import vlmkd.compose.train as evaluate  # the evaluator the composition root hands the loop

    cfg = load_config(tiny_config(tmp_path, data16, data={"val_fraction": 0.25}))
    real, scores, snapshots = evaluate.evaluate_split, [0.5, 0.9, 0.3], []

    def scripted(model, manifests, split, *a, **k):
        m = real(model, manifests, split, *a, **k)
        if split == "val" and len(snapshots) < len(scores):
            snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
            m["mean_per_class"] = scores[len(snapshots) - 1]
        return m

    monkeypatch.setattr(evaluate, "evaluate_split", scripted)
    summary = build_run(cfg, tmp_path / "sel").fit()
    assert summary["selected"] == {"split": "val", "epoch": 1, "mean_per_class": 0.9}
    exported = load_file(tmp_path / "sel" / "student.safetensors")
    assert any(not torch.equal(snapshots[1][k], snapshots[2][k]) for k in exported)
    for k, v in exported.items():
        torch.testing.assert_close(v, snapshots[1][k], rtol=0, atol=0, msg=k)


def torchrun_train(cfg: Path, run: Path, nproc: int, *overrides: str) -> dict[str, torch.Tensor]:
    """`torchrun --nproc_per_node N -m vlmkd train CFG`; returns the exported student's weights."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "VLMKD_NO_PROGRESS": "1"}
    port = str(29500 + nproc + os.getpid() % 1000)
    launch = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(nproc),
        "--master_port",
        port,
    ]
    cmd = [*launch, "-m", "vlmkd", "train", str(cfg), "--run-dir", str(run), *overrides]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return load_file(run / "student.safetensors")


def test_two_process_ddp_matches_one_process(tmp_path, data16):
    cfg = tiny_config(tmp_path, data16, train={"epochs": 1, "max_steps": 3}, eval={"every": 0})
    runs = {n: torchrun_train(cfg, tmp_path / f"ddp{n}", n, "train.device=cpu") for n in (1, 2)}
    for k in runs[1]:
        torch.testing.assert_close(runs[1][k], runs[2][k], rtol=1e-3, atol=1e-4, msg=k)


@pytest.mark.parametrize(
    "override, message",
    [
        (["train.epochz=1"], 'did you mean "epochs"'),
        (["data.root=/no/such/folder"], "does not exist"),
        (["losses.cls.name=balanced_softmx"], 'did you mean "balanced_softmax"'),
        (["eval.select_on=test"], "makes that number optimistic"),
        (["losses.clss.weight=0"], 'did you mean "losses.cls"'),
    ],
)
def test_user_errors_are_one_line_exit_2(tmp_path, data16, capsys, override, message):
    cfg = tiny_config(tmp_path, data16)
    assert main(["train", str(cfg), *override]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and err[-1].startswith("vlmkd train: error:")  # one line, after the log
    assert "Traceback" not in "\n".join(err)
