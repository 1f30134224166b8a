"""`vlmkd predict`: folders with bad files, list files, output formats, and PyTorch vs ONNX agreement."""

import csv
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image
from test_export_formats import make_run  # a sibling test module (pytest puts this folder on sys.path)

from vlmkd.cli import main
from vlmkd.export import export_model
from vlmkd.predict import load_model, predict


def image_dir(root: Path, n: int = 7) -> Path:
    rng = np.random.default_rng(0)
    (root / "sub").mkdir(parents=True)
    for i in range(n):
        size = (rng.integers(12, 40), rng.integers(12, 40))
        arr = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
        mode = ("RGB", "L", "RGBA")[i % 3]
        Image.fromarray(arr).convert(mode).save(root / ("sub" if i % 2 else ".") / f"img{i}.png")
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    (root / "sub" / "readme.txt").write_text("not an image")
    return root


def test_predict_reports_bad_files_and_predicts_the_rest(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    imgs = image_dir(tmp_path / "imgs")
    assert (
        main(["predict", str(run), str(imgs), "--format", "json", "--top-k", "2", "--batch-size", "3"]) == 0
    )
    captured = capsys.readouterr()
    recs = json.loads(captured.out)
    assert len(recs) == 9
    bad = {Path(r["path"]).name: r["error"] for r in recs if r["error"]}
    assert set(bad) == {"corrupt.jpg", "readme.txt"}
    assert "corrupt" in bad["corrupt.jpg"] and "not an image" in bad["readme.txt"]
    good = [r for r in recs if not r["error"]]
    assert len(good) == 7 and all(r["label"] in ("cat", "dog", "owl") and len(r["top_k"]) == 2 for r in good)
    assert all(abs(sum(t["score"] for t in r["top_k"]) - 1) < 1 for r in good)
    assert "2 of 9 files could not be read" in captured.err


def test_predict_onnx_export_agrees_with_pytorch_checkpoint(tmp_path):
    run = make_run(tmp_path / "run", seed=3)
    imgs = image_dir(tmp_path / "imgs", n=12)
    onnx_dir = export_model(run, "onnx", tmp_path / "onnx", measure_latency=False)
    a = predict(load_model(run), [imgs], top_k=3, batch_size=5)
    b = predict(load_model(onnx_dir), [imgs], top_k=3, batch_size=4)
    c = predict(load_model(run / "student.safetensors"), [imgs], top_k=3, batch_size=32)
    assert [r["label"] for r in a] == [r["label"] for r in b] == [r["label"] for r in c]
    np.testing.assert_allclose([r["score"] or 0 for r in a], [r["score"] or 0 for r in b], atol=1e-4)
    assert sum(r["error"] is None for r in a) == 12


def test_predict_list_file_csv_and_out_file(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    imgs = image_dir(tmp_path / "imgs", n=3)
    lst = tmp_path / "list.txt"
    lst.write_text(f"{imgs / 'img0.png'}\nimgs/sub/img1.png\nimgs/missing.png\n")
    out = tmp_path / "pred.csv"
    ts = export_model(run, "torchscript", tmp_path / "ts", measure_latency=False)
    assert main(["predict", str(ts), f"@{lst}", "--format", "csv", "--out", str(out)]) == 0
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [Path(r["path"]).name for r in rows] == ["img0.png", "img1.png", "missing.png"]
    assert rows[0]["label"] and rows[2]["error"] == "file does not exist"
    assert "1 of 3 files" in capsys.readouterr().err


def test_predict_table_and_missing_model(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    imgs = image_dir(tmp_path / "imgs", n=2)
    assert main(["predict", str(run), str(imgs / "img0.png")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["path", "label", "score"] and len(out) == 2
    assert main(["predict", str(tmp_path / "nothing"), str(imgs)]) == 2
    assert "does not exist" in capsys.readouterr().err
