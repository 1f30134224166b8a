"""The `interrogate` describer: a contrastive model ranks attribute phrases per image (the CLIP-Interrogator idea).

Any `VisionLanguageTeacher` (open_clip, Hugging Face CLIP/SigLIP, the vlmkd domain teacher) embeds the image and
every phrase of a vocabulary; the best phrases are composed into a sentence:
"a photo of a {class_name}, p1, p2, p3." (or "<prompt>, p1, p2, p3." when the prompt has no slot).

Vocabulary files: one phrase per line; `# comments`; optional `[category]` headers. With categories, at most one
phrase per category is used (so a description does not list three colours). Description k > 0 (when
`n_descriptions > 1`) samples phrases from the best 3 * top_k by their softmax scores, seeded by k.

Label-free descriptions (the demo's default): a prompt without the `{class_name}` slot, so the text says what the
teacher sees, not the label. `vocabulary: fashion_rich` adds appearance phrases cut from the enriched class
sentences (the subject clause and every class name removed) to the fashion attribute list.
"""

from __future__ import annotations

import hashlib
import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vlmkd.describe.base import DESCRIBERS, Description, fill_prompt
from vlmkd.errors import ConfigError

DEFAULT_HEAD = "a photo of a {class_name}"
BUNDLED = {"general": "attributes_general.txt", "fashion": "attributes_fashion.txt", "fashion_rich": None}
SENTENCES = "fashion_mnist_sentences.json"
# a sentence's subject clause ("A sandal is a", "Trousers look like a") names the class: cut up to its verb
_SUBJECT = re.compile(r"^.*?\b(is|are|has|have|looks like|look like)\b\s*")
_SPLIT = re.compile(r",|;|\bwith\b|\band\b|\bthat\b|\bwhose\b|\bmade of\b|\bheld\b")


def sentence_phrases(sentences: dict[str, list[str]]) -> list[str]:
    """Appearance phrases from class sentences, none naming a class ("a round neckline", "thin straps")."""
    names = {w for c in sentences for w in re.split(r"[/ ]", c.lower()) if len(w) > 2 and w != "ankle"}
    class_word = re.compile(r"\b(" + "|".join(sorted(map(re.escape, names))) + r")s?\b")
    out: list[str] = []
    for sents in sentences.values():
        for sent in sents:
            for frag in _SPLIT.split(_SUBJECT.sub("", sent.lower().rstrip(". "), count=1)):
                frag = frag.strip(" .")
                if 2 <= len(frag.split()) <= 7 and not class_word.search(frag) and frag not in out:
                    out.append(frag)
    return out


def _bundled_text(name: str) -> str:
    read = resources.files("vlmkd.assets").joinpath
    if BUNDLED[name]:
        return read(BUNDLED[name]).read_text("utf-8")
    sentences = json.loads(read(SENTENCES).read_text("utf-8"))
    sentences.pop("_about", None)
    extra = "\n".join(["[]", *sentence_phrases(sentences)])  # uncategorised: several may go together
    return read(BUNDLED["fashion"]).read_text("utf-8") + "\n" + extra


def read_vocabulary(path: str | None) -> tuple[list[str], list[str]]:
    """(phrases, category of each phrase). `path` None or a bundled name ("general", "fashion") or a file."""
    if path is None or path in BUNDLED:
        text = _bundled_text(path or "general")
    else:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(
                f"vocabulary file {path!r} not found; give a text file (one phrase a line) "
                f"or a bundled name: {', '.join(BUNDLED)}"
            )
        text = p.read_text("utf-8")
    phrases, cats, cat = [], [], ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            cat = line[1:-1].strip()
            continue
        if line not in phrases:
            phrases.append(line)
            cats.append(cat)
    if not phrases:
        raise ConfigError(f"vocabulary {path or 'general'!r} has no phrases")
    return phrases, cats


def _device_of(teacher: Any) -> torch.device:
    try:
        return next(teacher.parameters()).device
    except (AttributeError, StopIteration, TypeError):
        return torch.device("cpu")


@DESCRIBERS.register("interrogate")
class InterrogateDescriber:
    backend = "interrogate"

    def __init__(self, cfg: Any, teacher: Any = None):
        if teacher is None:
            raise ConfigError(
                "the interrogate describer needs a vision-language teacher (clip.name, or a domain teacher)"
            )
        self.cfg = cfg
        self.teacher = teacher
        self.head = DEFAULT_HEAD if cfg.prompt is None else cfg.prompt
        self.top_k = int(cfg.top_k_phrases)
        if self.top_k < 1:
            raise ConfigError("describe.top_k_phrases must be at least 1")
        self.phrases, self.categories = read_vocabulary(cfg.vocabulary)
        self.device = _device_of(teacher)
        with torch.no_grad():
            emb = torch.as_tensor(teacher.encode_text(self.phrases)).float().to(self.device)
        self.phrase_emb = F.normalize(emb, dim=-1)
        self.chunk_size = max(1, int(cfg.batch_size)) * 4
        self.vocab_sha = hashlib.sha256("\n".join(self.phrases).encode()).hexdigest()[:16]

    def identity(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "model": str(getattr(self.teacher, "teacher_id", type(self.teacher).__name__)),
            "revision": self.cfg.revision,
            "prompt": self.head,
            "decoding": {
                "top_k_phrases": self.top_k,
                "vocabulary": self.vocab_sha,
                "categories": any(self.categories),
            },
        }

    @torch.no_grad()
    def scores(self, images) -> torch.Tensor:
        pixels = torch.stack([self.teacher.preprocess(im) for im in images]).to(self.device)
        feats = F.normalize(torch.as_tensor(self.teacher.encode_image(pixels)).float(), dim=-1)
        return feats @ self.phrase_emb.T

    def pick(self, scores: np.ndarray, k: int) -> list[int]:
        order = np.argsort(-scores, kind="stable")
        if k > 0:  # k-th extra description: sample among the best 3 * top_k, seeded by k
            pool = order[: 3 * self.top_k]
            p = np.exp((scores[pool] - scores[pool].max()) / 0.05)
            rng = np.random.default_rng(int(self.cfg.seed) * 1000 + k)
            order = rng.choice(pool, size=len(pool), replace=False, p=p / p.sum())
        chosen, used = [], set()
        for j in order:
            cat = self.categories[j]
            if cat and cat in used:
                continue
            chosen.append(int(j))
            if cat:
                used.add(cat)
            if len(chosen) == self.top_k:
                break
        return chosen

    def compose(self, class_name: str | None, phrase_ids: list[int]) -> str:
        head = fill_prompt(self.head, class_name).rstrip(" .")
        return ", ".join([head, *(self.phrases[j] for j in phrase_ids)]) + "."

    def describe(self, images, class_names, n, on_done=None):
        out = []
        bs = max(1, int(self.cfg.batch_size))
        for s in range(0, len(images), bs):
            sc = self.scores(images[s : s + bs]).cpu().numpy()
            for row, name in zip(sc, class_names[s : s + bs]):
                out.append([Description(self.compose(name, self.pick(row, k))) for k in range(n)])
            if on_done:
                on_done(len(sc))
        return out
