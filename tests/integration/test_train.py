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
from vlmkd.config import load_config
from vlmkd.engine.trainer import Trainer

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
        "eval": {"every": 1, "select_on": "test"},
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


def test_resume_matches_uninterrupted(tmp_path, data16):
    cfg = load_config(tiny_config(tmp_path, data16, train={"checkpoint_every": 2}))
    Trainer(cfg, tmp_path / "full").fit()

    t = Trainer(cfg, tmp_path / "cut")
    calls = {"n": 0}
    real_step = t._step

    def crashing_step(batch):
        calls["n"] += 1
        if calls["n"] == 6:  # dies mid-epoch 2: after the step-4 checkpoint and the step-5 log record
            raise KeyboardInterrupt
        return real_step(batch)

    t._step = crashing_step
    with pytest.raises(KeyboardInterrupt):
        t.fit()
    Trainer(cfg, tmp_path / "cut", resume=True).fit()
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


def test_two_process_ddp_matches_one_process(tmp_path, data16):
    cfg = tiny_config(tmp_path, data16, train={"epochs": 1, "max_steps": 3}, eval={"every": 0})
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "VLMKD_NO_PROGRESS": "1"}
    runs = {}
    for n in (1, 2):
        run = tmp_path / f"ddp{n}"
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(n),
            "--master_port",
            str(29500 + n + os.getpid() % 1000),
            "-m",
            "vlmkd",
            "train",
            str(cfg),
            "--run-dir",
            str(run),
            "train.device=cpu",
        ]
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        runs[n] = load_file(run / "student.safetensors")
    for k in runs[1]:
        torch.testing.assert_close(runs[1][k], runs[2][k], rtol=1e-3, atol=1e-4, msg=k)


@pytest.mark.parametrize(
    "override, message",
    [
        (["train.epochz=1"], 'did you mean "epochs"'),
        (["data.root=/no/such/folder"], "does not exist"),
        (["losses.cls.name=balanced_softmx"], 'did you mean "balanced_softmax"'),
    ],
)
def test_user_errors_are_one_line_exit_2(tmp_path, data16, capsys, override, message):
    cfg = tiny_config(tmp_path, data16)
    assert main(["train", str(cfg), *override]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "Traceback" not in err[0]
