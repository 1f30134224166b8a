"""Description store: per-image keys, row log, resume, failures retried, skips, merge; the interrogate describer."""

from __future__ import annotations

import numpy as np
import pytest

from describe_fixtures import ToyTeacher, png_manifest
from vlmkd.config import DescribeConfig
from vlmkd.data.images import open_image
from vlmkd.describe import DescriptionStore, build_describer, describe_manifest, merge_view
from vlmkd.describe.base import Description, failed
from vlmkd.describe.interrogate import read_vocabulary
from vlmkd.describe.store import read_rows, write_rows
from vlmkd.errors import BackendError, ConfigError, DataError


class FlakyDescriber:
    """Fails the images whose index is in `bad` (first call only), counts what it was asked."""

    backend = "fake"
    chunk_size = 4

    def __init__(self, bad=(), prompt="p"):
        self.bad, self.calls, self.prompt = set(bad), [], prompt
        self.template = prompt

    def identity(self):
        return {
            "backend": "fake",
            "model": "fake-vlm",
            "revision": None,
            "prompt": self.prompt,
            "decoding": {},
        }

    def describe(self, images, class_names, n, on_done=None):
        out = []
        for im, c in zip(images, class_names):
            tag = im.getpixel((0, 0))
            self.calls.append(tag)
            if tag in self.bad:
                self.bad.discard(tag)
                out.append([failed("injected") for _ in range(n)])
            else:
                out.append([Description(f"{c} {tag} {k}", None, 3, 4) for k in range(n)])
        if on_done:
            on_done(len(images))
        return out


def _cfg(tmp_path, **kw):
    return DescribeConfig(backend="interrogate", output=str(tmp_path / "desc"), shard_size=5, **kw)


def _tags(m):
    return [open_image(m, i).getpixel((0, 0)) for i in range(len(m))]


def test_full_run_view_and_provenance(tmp_path):
    m = png_manifest(tmp_path, n=12)
    d = FlakyDescriber()
    folder = describe_manifest(m, _cfg(tmp_path, n_descriptions=2), d)
    st = DescriptionStore(tmp_path / "desc")  # the parent resolves through LATEST
    assert st.path == folder and st.meta["ok"] == 24 and st.meta["model"] == "fake-vlm"
    t = st.load()
    assert t["sample_id"] == [s for s in m.ids for _ in range(2)] and list(t["k"][:2]) == [0, 1]
    rows = read_rows(folder / "descriptions.parquet")
    r = rows[0]
    assert r["model_id"] == "fake-vlm" and r["status"] == "ok" and r["created"] and r["decoding"] == "{}"
    assert r["prompt_tokens"] == 3 and r["completion_tokens"] == 4 and len(r["image_key"]) == 32
    assert st.texts_by_id()["s0001"][1].startswith("sandal")
    # rows reach the log once shard_size (5) images are done (chunks of 4: after 8, then the last 4)
    assert len(list((tmp_path / "desc").glob("rows-*/parts/*.parquet"))) == 2


def test_failures_recorded_then_only_they_are_retried(tmp_path):
    m = png_manifest(tmp_path, n=10)
    tags = _tags(m)
    d1 = FlakyDescriber(bad={tags[2], tags[7]})
    with pytest.raises(BackendError, match="2 of 10 descriptions failed"):
        describe_manifest(m, _cfg(tmp_path), d1)
    st = DescriptionStore(tmp_path / "desc")
    assert st.meta["failed"] == 2 and len(st.load()["text"]) == 8
    assert len(st.load(include_failed=True)["text"]) == 10
    d2 = FlakyDescriber()
    folder = describe_manifest(m, _cfg(tmp_path), d2)
    assert sorted(d2.calls) == sorted([tags[2], tags[7]])  # only the failures were described again
    st = DescriptionStore(folder)
    assert st.meta["failed"] == 0 and st.load()["sample_id"] == m.ids
    d3 = FlakyDescriber()
    describe_manifest(m, _cfg(tmp_path), d3)
    assert d3.calls == []  # everything done: nothing is described


def test_keyed_per_image_adding_and_removing_files_describes_only_new_content(tmp_path):
    m = png_manifest(tmp_path, n=30)
    first = m.subset(list(range(20)))
    d = FlakyDescriber()
    a = describe_manifest(first, _cfg(tmp_path), d)
    assert len(d.calls) == 20
    d = FlakyDescriber()
    b = describe_manifest(m, _cfg(tmp_path), d)  # 10 images added to the described folder
    assert len(d.calls) == 10 and sorted(d.calls) == sorted(_tags(m)[20:])
    d = FlakyDescriber()
    c = describe_manifest(m.subset(list(range(5, 30))), _cfg(tmp_path), d)  # 5 removed
    assert d.calls == [] and len({a, b, c}) == 3  # a view per manifest, no text described again
    assert DescriptionStore(c).load()["sample_id"] == m.ids[5:]
    assert DescriptionStore(b).texts_by_id()[m.ids[3]] == DescriptionStore(a).texts_by_id()[m.ids[3]]
    d = FlakyDescriber(prompt="another prompt")
    describe_manifest(first, _cfg(tmp_path), d)
    assert len(d.calls) == 20  # another describer identity: described again


def test_same_content_twice_is_described_once_and_class_slot_keys_by_label(tmp_path):
    m = png_manifest(tmp_path, n=4)
    m.paths[3] = m.paths[0]  # row 3 shows the same picture as row 0 (label 0 vs 0)
    d = FlakyDescriber()
    folder = describe_manifest(m, _cfg(tmp_path), d)
    assert len(d.calls) == 3 and DescriptionStore(folder).meta["ok"] == 4
    m.labels[3] = 1  # same picture, another label, and a prompt that names the class: another description
    d = FlakyDescriber(prompt="a {class_name}")
    describe_manifest(m, _cfg(tmp_path), d)
    assert len(d.calls) == 4


def _png_bomb(path, side=30_000):
    """A PNG whose header declares side x side pixels (900 Mpx), with a few bytes of data."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def _bad_files(m, root):
    (root / m.paths[1]).write_bytes(b"")  # zero bytes
    data = (root / m.paths[2]).read_bytes()
    (root / m.paths[2]).write_bytes(data[: len(data) // 2])  # truncated
    (root / m.paths[3]).write_bytes(b"this is not an image")
    _png_bomb(root / m.paths[4])
    return {m.ids[1], m.ids[2], m.ids[3], m.ids[4]}


def test_unreadable_images_skipped_counted_named_and_not_retried(tmp_path):
    m = png_manifest(tmp_path, n=8)
    bad = _bad_files(m, tmp_path)
    with pytest.raises(DataError, match=r"0001\.png"):  # on_bad_image=error: one line naming the file
        describe_manifest(m, _cfg(tmp_path), FlakyDescriber())
    d = FlakyDescriber()
    folder = describe_manifest(m, _cfg(tmp_path), d, on_bad_image="skip")
    st = DescriptionStore(folder)
    assert st.meta["skipped"] == 4 and st.meta["failed"] == 0 and st.meta["ok"] == 4
    assert any("0003.png" in name for name in st.meta["skipped_files"])
    assert set(np.array(m.ids)[st.skipped_mask()]) == bad
    assert len(d.calls) == 4  # the readable images (the error stopped the first run before any)
    d = FlakyDescriber()
    describe_manifest(m, _cfg(tmp_path), d, on_bad_image="skip")
    assert d.calls == []  # skipped rows are final: a rerun has nothing to retry


def test_shards_across_processes_then_merge(tmp_path):
    m = png_manifest(tmp_path, n=12)
    cfg = _cfg(tmp_path)
    folder = describe_manifest(m, cfg, FlakyDescriber(), shard="0/2")
    assert not (folder / "descriptions.parquet").exists()
    assert merge_view(m, cfg, FlakyDescriber().identity(), 1) is None  # rows of process 1 are missing
    describe_manifest(m, cfg, FlakyDescriber(), shard=(1, 2))
    assert DescriptionStore(folder).load()["sample_id"] == m.ids


def test_duplicate_rows_in_the_log_resolve_to_one(tmp_path):
    m = png_manifest(tmp_path, n=6)
    folder = describe_manifest(m, _cfg(tmp_path), FlakyDescriber())
    part = sorted((tmp_path / "desc").glob("rows-*/parts/*.parquet"))[0]
    rows = read_rows(part)
    write_rows(part.with_name("zz-dup.parquet"), [{**r, "text": "later copy"} for r in rows])
    describe_manifest(m, _cfg(tmp_path), FlakyDescriber())
    t = DescriptionStore(folder).load()
    assert t["sample_id"] == m.ids and "later copy" not in t["text"]  # one row each, the oldest wins


def test_interrogate_ranks_phrases(tmp_path):
    vocab = tmp_path / "v.txt"
    vocab.write_text("[colour]\nred\ngreen\nblue\n[shape]\nround\nsquare\n# comment\n")
    phrases, cats = read_vocabulary(str(vocab))
    assert phrases == ["red", "green", "blue", "round", "square"] and cats[0] == "colour"
    cfg = DescribeConfig(vocabulary=str(vocab), top_k_phrases=2, n_descriptions=2)
    d = build_describer(cfg, teacher=ToyTeacher())
    from PIL import Image

    red = Image.new("RGB", (8, 8), (250, 0, 0))
    out = d.describe([red], ["t_shirt"], 2)
    text = out[0][0].text
    assert text.startswith("a photo of a t shirt, red, ") and text.endswith(".")
    assert "green" not in text and "blue" not in text  # one phrase per category
    assert out[0][1].ok
    d2 = build_describer(DescribeConfig(prompt="a garment", vocabulary="fashion"), teacher=ToyTeacher())
    assert d2.describe([red], ["x"], 1)[0][0].text.startswith("a garment, ")
    assert d.identity()["model"] == "toy:rgb"
    with pytest.raises(ConfigError, match="teacher"):
        build_describer(DescribeConfig())


def test_bundled_vocabularies():
    for name in ("general", "fashion"):
        phrases, cats = read_vocabulary(name)
        assert len(phrases) > 50 and len(set(cats)) > 5
    assert "laces" in read_vocabulary("fashion")[0]


def test_greedy_n_gt_1_is_refused():
    with pytest.raises(ConfigError, match="do_sample"):
        build_describer(DescribeConfig(backend="openai", n_descriptions=2, base_url="http://x", model="m"))


def test_model_card_names_the_describer_that_wrote_the_descriptions(tmp_path):
    from vlmkd.export.card import _describer

    m = png_manifest(tmp_path, n=3)
    folder = describe_manifest(m, _cfg(tmp_path), FlakyDescriber())
    config = {
        "text": {"descriptions": str(folder)},
        "describe": {"backend": "openai", "model": "recipe-default"},
    }
    line = _describer(config)
    assert "`fake-vlm`" in line and "`fake`" in line and "recipe-default" not in line


def test_changed_file_content_is_described_again(tmp_path):
    import os

    from PIL import Image

    m = png_manifest(tmp_path, n=5)
    describe_manifest(m, _cfg(tmp_path), FlakyDescriber())
    p = tmp_path / m.paths[2]
    Image.new("RGB", (24, 24), (1, 2, 3)).save(p)  # same path, new picture
    st = p.stat()
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a coarse file-system clock
    d = FlakyDescriber()
    describe_manifest(m, _cfg(tmp_path), d)
    assert d.calls == [(1, 2, 3)]  # the cached hash of the old file was not trusted
