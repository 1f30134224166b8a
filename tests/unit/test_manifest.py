"""The manifest at scale: compact ids/paths, a streamed key equal to the old artifact_key(to_dict), a cached key
that still follows in-place edits, streamed save/load with the same bytes as before."""

import json
import pickle
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import vlmkd.data.strings as strings
from vlmkd.data.manifest import Manifest
from vlmkd.data.strings import StrArray
from vlmkd.utils.io import artifact_key, write_json

# quotes, backslash, control characters, accents, CJK, an emoji (a surrogate pair in JSON), an empty id
ODD = ["a", 'é/日本 "q" \\ \n\t\x01', "🙂.jpg", "", "x" * 50, "dir/ünï.png"]


def _old_key(m: Manifest) -> str:
    """The list-based definition every existing artifact was keyed with."""
    d = m.to_dict()
    d.pop("root")
    return artifact_key(d)


def _manifests() -> list[Manifest]:
    n = 10
    return [
        Manifest(
            ids=ODD,
            labels=[0, 1, 2, 0, 1, 2],
            class_names=["c0", "ç1", 'c"2'],
            root="/data",
            paths=ODD[::-1],
            source={"b": Path("/x"), "a": [1, np.int64(2)]},
            split="tr",
        ),
        Manifest(
            ids=[f"train/{i:07d}" for i in range(n)],
            labels=np.arange(n) % 3,
            class_names=["a", "b", "c"],
            indices=np.arange(n)[::-1],
            source={"format": "fashion_mnist"},
        ),
        Manifest(ids=[], labels=[], class_names=["a"], paths=[]),
    ]


@pytest.mark.parametrize("chunk", [2, 65536])  # 2: every column crosses chunk boundaries
def test_key_and_saved_bytes_equal_the_list_based_forms(tmp_path, monkeypatch, chunk):
    monkeypatch.setattr(strings, "CHUNK", chunk)
    for k, m in enumerate(_manifests()):
        assert m.key() == _old_key(m)
        new, old = tmp_path / f"new{k}.json", tmp_path / f"old{k}.json"
        m.save(new)
        write_json(old, {**m.to_dict(), "key": _old_key(m)}, indent=None)  # what save() wrote before
        assert new.read_bytes() == old.read_bytes()
        back = Manifest.load(old)
        assert back.key() == m.key() and list(back.ids) == list(m.ids) and back.root == m.root


def test_load_reads_any_json_layout_and_reports_bad_json(tmp_path):
    m = _manifests()[0]
    pretty = tmp_path / "pretty.json"
    write_json(pretty, {**m.to_dict(), "key": m.key()}, indent=2)  # whitespace, newlines
    assert Manifest.load(pretty).key() == m.key() and Manifest.load(pretty).paths == m.paths
    odd = tmp_path / "odd.json"  # ints written as floats: not the usual layout, the json module reads it
    arrays = _manifests()[1]
    odd.write_text(json.dumps({**arrays.to_dict(), "labels": [float(x) for x in arrays.labels]}))
    assert Manifest.load(odd).key() == arrays.key()
    bad = tmp_path / "bad.json"
    bad.write_text(pretty.read_text()[:-20])
    with pytest.raises(json.JSONDecodeError):
        Manifest.load(bad)


def test_key_follows_in_place_edits_and_reassignment():
    m = _manifests()[0]
    seen = {m.key()}
    m.labels[3] = 2
    seen.add(m.key())
    m.paths[0] = "elsewhere.jpg"
    seen.add(m.key())
    m.ids[1] = "renamed"
    seen.add(m.key())
    m.class_names[2] = "renamed class"
    seen.add(m.key())
    m.source["a"] = [3]
    seen.add(m.key())
    m.split = "other"
    seen.add(m.key())
    assert len(seen) == 7 and m.key() == _old_key(m)
    sub = m.relabel([2, 0])  # reassigns labels and class_names after subset() keyed nothing
    assert sub.key() == _old_key(sub) and list(sub.labels) == [1, 0, 0, 0]


def test_subset_copies_do_not_share_in_place_edits():
    m = _manifests()[0]
    sub = m.subset([2, 0, 0])
    assert sub.ids == ["🙂.jpg", "a", "a"] and sub.paths == [ODD[3], ODD[5], ODD[5]]
    sub.paths[0] = "changed"
    twin = Manifest(ids=m.ids, labels=m.labels, class_names=m.class_names, paths=m.paths)
    twin.ids[0] = "changed"
    assert m.paths[2] == ODD[3] and m.ids[0] == "a"


def test_str_array_reads_like_a_list():
    s = StrArray(ODD + ["\udcff-undecodable"])  # a file name os.fsdecode gave from invalid UTF-8
    plain = ODD + ["\udcff-undecodable"]
    assert list(s) == plain and s == plain and plain == s and len(s) == len(plain)
    assert s[-1] == plain[-1] and s[np.int64(2)] == plain[2] and s[1:4] == plain[1:4]
    assert "🙂.jpg" in s and "🙂" not in s and 3 not in s and s.index("x" * 50) == 4
    assert pickle.loads(pickle.dumps(s)) == s and list(s.take([5, 0, -1])) == [plain[5], plain[0], plain[-1]]
    with pytest.raises(IndexError):
        s[len(plain)]
    with pytest.raises(TypeError):
        StrArray(["a", 3])


def test_arrow_reads_the_buffers():
    pa = pytest.importorskip("pyarrow")
    s = StrArray(ODD)
    assert pa.array(s, pa.string()).to_pylist() == ODD
    assert pa.array(s.take([4, 1])).to_pylist() == [ODD[4], ODD[1]]


def test_a_large_manifest_holds_no_object_per_row_and_key_and_save_stream(tmp_path, monkeypatch):
    """The list-based manifest kept ~70 B per id and built the whole JSON to hash or save it (~150 B per row)."""
    monkeypatch.setattr(strings, "CHUNK", 1024)
    n = 50_000
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        ids = [f"train/{i:07d}" for i in range(n)]
        m = Manifest(ids=ids, labels=np.arange(n) % 7, class_names=list("abcdefg"), indices=np.arange(n))
        del ids
        held = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        m.key()
        m.save(tmp_path / "m.json")
        extra = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert (
        held < 48 * n
    )  # 13-byte ids + 8-byte offsets + 2 x 8-byte int arrays (a list of str: ~88 B per row)
    assert extra < 2**20  # a few 1024-row chunks, not the whole JSON (~7 MB here)
    assert Manifest.load(tmp_path / "m.json").key() == m.key() == _old_key(m)
