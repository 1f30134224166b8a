"""Multi-node training as the README documents it: two torchrun "nodes" on 127.0.0.1 (c10d rendezvous, gloo),
one shared artifact folder, a missing teacher cache built once across the nodes; the result equals one process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_artifacts_ddp import config, features, shard_lines, tiny  # noqa: F401  (tiny: the module fixture)

from helpers_dist import dist_env, free_port, torchrun_cmd


def per_sample_config(tmp_path: Path, models: dict, cache: Path, name: str) -> Path:
    """balanced softmax + feature MSE to cached teacher features: per-sample losses, so any split is exact."""
    return config(
        tmp_path / f"{name}.yaml",
        models,
        cache,
        model={"name": "cnn_tiny", "head": "both"},
        losses={"cls": {"name": "balanced_softmax"}, "mse": {"name": "mse", "weight": 1.0}},
        optim={"name": "sgd", "lr": 0.05},
        train={"epochs": 2, "max_steps": 4, "tensorboard": False, "output_dir": str(tmp_path / "runs")},
        eval={"every": 0},
    )


@pytest.mark.slow
def test_two_nodes_on_localhost_equal_one_process(tmp_path, tiny):  # noqa: F811
    one_cfg = per_sample_config(tmp_path, tiny, tmp_path / "cache_one", "one")
    cmd = [sys.executable, "-m", "vlmkd", "train", str(one_cfg), "--run-dir", str(tmp_path / "one")]
    r = subprocess.run(cmd, env=dist_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]

    shared = tmp_path / "shared_artifacts"  # what a shared filesystem is to real nodes
    two_cfg = per_sample_config(tmp_path, tiny, shared, "two")
    port = free_port()
    launcher = [
        "--nnodes", "2", "--nproc_per_node", "1", "--rdzv_backend", "c10d",
        "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", "vlmkd-test",
    ]  # fmt: skip
    args = ["train", str(two_cfg), "--run-dir", str(tmp_path / "two")]
    nodes = [
        subprocess.Popen(torchrun_cmd(1, args, launcher), env=dist_env(), stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    errs = [p.communicate(timeout=300)[1] for p in nodes]
    assert all(p.returncode == 0 for p in nodes), "\n".join(e[-2000:] for e in errs)

    built = shard_lines("".join(errs), "teacher features")
    assert sorted(int(s) for s, _ in built) == [
        1,
        2,
        3,
        4,
        5,
    ]  # the shared cache was built once, by both nodes
    assert torch.equal(torch.from_numpy(features(shared)), torch.from_numpy(features(tmp_path / "cache_one")))
    a, b = (
        load_file(tmp_path / "one" / "student.safetensors"),
        load_file(tmp_path / "two" / "student.safetensors"),
    )
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-5, msg=k)
