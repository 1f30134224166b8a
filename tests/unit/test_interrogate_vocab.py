"""Label-free interrogate descriptions: the rich vocabulary's sentence phrases never name a class."""

from __future__ import annotations

import json
import re
from importlib import resources

from PIL import Image

from describe_fixtures import ToyTeacher
from vlmkd.config import DescribeConfig
from vlmkd.describe import build_describer
from vlmkd.describe.interrogate import read_vocabulary, sentence_phrases


def test_sentence_phrases_cut_the_subject_and_every_class_name():
    got = sentence_phrases(
        {
            "Coat": ["A coat is a heavy outer garment with long sleeves and a collar."],
            "Ankle boot": ["An ankle boot has a tall shaft, with a sturdy heel."],
            "Shirt": ["A shirt looks like a T shape with a shirt collar."],
        }
    )
    assert {"a heavy outer garment", "long sleeves", "a tall shaft", "a sturdy heel", "a t shape"} <= set(got)
    assert not any(re.search(r"\b(coats?|boots?|shirts?)\b", p) for p in got)  # "a shirt collar" dropped
    assert "a collar" in got and len(got) == len(set(got))


def test_fashion_rich_extends_fashion_without_naming_the_classes():
    rich, cats = read_vocabulary("fashion_rich")
    base, _ = read_vocabulary("fashion")
    assert rich[: len(base)] == base and len(rich) >= len(base) + 50
    extra = [p for p, c in zip(rich, cats) if c == ""]  # sentence phrases: uncategorised
    assert "a round neckline" in extra and "ribbed cuffs" in extra
    names = json.loads(resources.files("vlmkd.assets").joinpath("fashion_mnist_sentences.json").read_text())
    words = {w.lower() for n in names if n != "_about" for w in re.split(r"[/ ]", n) if w.lower() != "ankle"}
    assert not any(re.search(rf"\b{re.escape(w)}s?\b", p) for p in extra for w in words)


def test_label_free_prompt_keeps_the_label_out_of_the_text():
    red = Image.new("RGB", (8, 8), (250, 0, 0))
    free = build_describer(
        DescribeConfig(prompt="a photo of a fashion item", vocabulary="fashion_rich"), ToyTeacher()
    )
    text = free.describe([red], ["Sneaker"], 1)[0][0].text
    assert text.startswith("a photo of a fashion item, ") and "sneaker" not in text.lower()
    conditioned = build_describer(DescribeConfig(prompt="a photo of a {class_name}"), ToyTeacher())
    assert conditioned.describe([red], ["Sneaker"], 1)[0][0].text.startswith("a photo of a Sneaker, ")
    assert free.identity()["prompt"] != conditioned.identity()["prompt"]  # another store key
