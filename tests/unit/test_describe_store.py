"""Description store: keys, shards, resume, failures retried, merge checks; the interrogate describer."""

from __future__ import annotations

import pytest

from describe_fixtures import ToyTeacher, png_manifest
from vlmkd.config import DescribeConfig
from vlmkd.describe import DescriptionStore, build_describer, describe_manifest, merge_shards
from vlmkd.describe.base import Description, failed
from vlmkd.describe.interrogate import read_vocabulary
from vlmkd.describe.store import read_rows, shard_name, write_rows
from vlmkd.errors import ArtifactError, ConfigError


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


def test_full_run_merge_and_provenance(tmp_path):
    m = png_manifest(tmp_path, n=12)
    d = FlakyDescriber()
    folder = describe_manifest(m, _cfg(tmp_path, n_descriptions=2), d)
    st = DescriptionStore(tmp_path / "desc")  # the parent resolves through LATEST
    assert st.path == folder and st.meta["num_shards"] == 3 and st.meta["ok"] == 24
    t = st.load()
    assert t["sample_id"] == [s for s in m.ids for _ in range(2)] and list(t["k"][:2]) == [0, 1]
    rows = read_rows(folder / "descriptions.parquet")
    r = rows[0]
    assert r["model_id"] == "fake-vlm" and r["status"] == "ok" and r["created"] and r["decoding"] == "{}"
    assert r["prompt_tokens"] == 3 and r["completion_tokens"] == 4
    assert st.texts_by_id()["s0001"][1].startswith("sandal")


def test_failures_recorded_then_only_they_are_retried(tmp_path):
    m = png_manifest(tmp_path, n=10)
    from vlmkd.data.images import open_image

    tags = [open_image(m, i).getpixel((0, 0)) for i in range(10)]
    d1 = FlakyDescriber(bad={tags[2], tags[7]})
    folder = describe_manifest(m, _cfg(tmp_path), d1)
    st = DescriptionStore(folder)
    assert st.meta["failed"] == 2 and len(st.load()["text"]) == 8
    assert len(st.load(include_failed=True)["text"]) == 10
    d2 = FlakyDescriber()
    describe_manifest(m, _cfg(tmp_path), d2)
    assert sorted(d2.calls) == sorted([tags[2], tags[7]])  # only the failures were described again
    st = DescriptionStore(folder)
    assert st.meta["failed"] == 0 and st.load()["sample_id"] == m.ids
    d3 = FlakyDescriber()
    describe_manifest(m, _cfg(tmp_path), d3)
    assert d3.calls == []  # everything done: nothing is described


def test_key_changes_with_prompt_and_manifest(tmp_path):
    m = png_manifest(tmp_path, n=6)
    a = describe_manifest(m, _cfg(tmp_path), FlakyDescriber(prompt="a"))
    b = describe_manifest(m, _cfg(tmp_path), FlakyDescriber(prompt="b"))
    c = describe_manifest(m.subset([0, 1, 2]), _cfg(tmp_path), FlakyDescriber(prompt="a"))
    assert len({a, b, c}) == 3
    with pytest.raises(ConfigError):  # shard size is fixed once a store is started
        describe_manifest(
            m, DescribeConfig(output=str(tmp_path / "desc"), shard_size=2), FlakyDescriber("", "a")
        )


def test_shards_across_processes_and_merge_checks(tmp_path):
    m = png_manifest(tmp_path, n=12)
    cfg = _cfg(tmp_path)
    folder = describe_manifest(m, cfg, FlakyDescriber(), shard="0/2")
    assert not (folder / "descriptions.parquet").exists()
    with pytest.raises(ArtifactError, match="missing"):
        merge_shards(folder, m.ids, 1)
    describe_manifest(m, cfg, FlakyDescriber(), shard=(1, 2))
    assert DescriptionStore(folder).load()["sample_id"] == m.ids
    # a duplicated row is refused
    p = folder / "shards" / shard_name(0, 3)
    rows = read_rows(p)
    write_rows(p, rows + rows[:1])
    with pytest.raises(ArtifactError, match="duplicate"):
        merge_shards(folder, m.ids, 1)


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
