"""The run record: keyed folders (LATEST followed), descriptions named through the embeddings made from them,
--like pins and their one-line errors, and the moved-LATEST warning."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from vlmkd.errors import ArtifactError
from vlmkd.utils import provenance


def store(parent, key: str, **meta):
    folder = parent / key[:16]
    folder.mkdir(parents=True)
    (folder / "meta.json").write_text(json.dumps({"key": key, **meta}))
    (parent / "LATEST").write_text(json.dumps({"key": key, "folder": key[:16]}))
    return folder


@pytest.fixture(autouse=True)
def clean():
    provenance.start_run()
    provenance.expect({})
    yield
    provenance.expect({})


def test_record_names_keyed_folders_and_pins_them(tmp_path):
    desc = store(tmp_path / "desc", "d" * 64)
    emb = store(tmp_path / "emb", "e" * 64)
    provenance.record_artifact("embeddings", "e" * 64, emb, source_key="d" * 64)
    run = tmp_path / "run"
    run.mkdir()
    rec = provenance.finish_run(run, SimpleNamespace(descriptions=str(tmp_path / "desc")))  # via LATEST
    assert rec["artifacts"]["descriptions"] == {"key": "d" * 64, "folder": str(desc.resolve())}
    assert json.loads((run / "artifacts.json").read_text()) == rec
    assert sorted(provenance.pin_overrides(run)) == [
        f"text.descriptions={desc.resolve()}",
        f"text.embeddings={emb.resolve()}",
    ]
    with pytest.raises(ArtifactError, match="reference run used eeeeeeee"):  # --like: another key is an error
        provenance.record_artifact("embeddings", "f" * 64, emb)

    # LATEST moves to a new description store: one warning line naming both keys
    store(tmp_path / "desc", "a" * 64)
    (lines,) = [provenance.warn_if_moved(SimpleNamespace(descriptions=str(tmp_path / "desc")), run, "run")]
    assert len(lines) == 1 and "aaaaaaaaaaaaaaaa" in lines[0] and "dddddddddddddddd" in lines[0]

    (desc / "meta.json").unlink()  # gone: --like refuses in one line
    with pytest.raises(ArtifactError, match="descriptions it used .* is missing"):
        provenance.pin_overrides(run)
