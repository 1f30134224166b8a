"""Issue 19's quiet failures, each now a one-line error through the real CLI (exit code 2)."""

from __future__ import annotations

from vlmkd.cli import main


def test_eval_of_a_missing_run_names_the_path_given(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    assert main(["eval", "runs/does_not_exist"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'runs/does_not_exist' does not exist; give a run folder" in err[0]
    assert "'runs' is not" not in err[0]


def test_train_with_negative_epochs_stops_before_writing_a_run(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"train: {{output_dir: '{tmp_path / 'runs'}'}}\n")
    assert main(["train", str(cfg), "train.epochs=-1"]) == 2
    assert "train.epochs must be at least 1, got -1" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # it used to train 0 steps, write a full run folder and exit 0
