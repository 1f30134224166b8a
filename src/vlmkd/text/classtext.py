"""Per-class texts: prompt templates, the OOD paper's enriched form, LLM-written attribute sentences, and import of
the original repository's `label2text.txt` / `chatgpt.txt` pair.

    texts = class_texts(class_names, cfg.classtext, sentences)      # list[list[str]], several texts per class
    folder = build_class_texts(class_names, cfg.classtext, cfg.embed)  # classtexts.json + embedding store

Underscores in class names become spaces. Enriched form: "a photo of {name} . {sentence}" (configurable).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from vlmkd.describe.http import ChatClient
from vlmkd.errors import ArtifactError, ConfigError, DataError
from vlmkd.text.encoders import build_text_encoder
from vlmkd.text.store import embed_texts
from vlmkd.utils.device import resolve_device
from vlmkd.utils.dist import build_once, work_split
from vlmkd.utils.io import artifact_key, read_json, resolve_store, write_json
from vlmkd.utils.offline import OFFLINE_ROUTE, check_server

log = logging.getLogger("vlmkd")


def display_name(name: str) -> str:
    return " ".join(name.replace("_", " ").split())


def fill(template: str, name: str, sentence: str | None = None) -> str:
    out = template.replace("{name}", name)
    if "{sentence}" in out:
        out = out.replace("{sentence}", sentence or "")
    return out


def class_texts(
    class_names: list[str], cfg: Any, sentences: list[list[str]] | None = None
) -> list[list[str]]:
    """Texts per class. Enriched (cfg.enriched and sentences given): one text per sentence; else one per template."""
    out = []
    for c, raw in enumerate(class_names):
        name = display_name(raw)
        if cfg.enriched:
            if sentences is None or not sentences[c]:
                raise ConfigError(
                    f"classtext.enriched needs attribute sentences (class {raw!r} has none); "
                    "set classtext.sentences_backend or classtext.sentences_file"
                )
            out.append([fill(cfg.enriched_template, name, s) for s in sentences[c]])
        else:
            if not cfg.templates:
                raise ConfigError(
                    "classtext.templates is empty; give at least one, e.g. 'a photo of a {name}.'"
                )
            out.append([fill(t, name) for t in cfg.templates])
    return out


# ---------------------------------------------------------------------------------------- sentence sources


def read_label2text(label2text: str | Path, chatgpt: str | Path) -> dict[str, tuple[str, str]]:
    """The original repository's pair: `label2text.txt` lines "folder_id running_id natural_name" (or
    "folder_id class name") and line-aligned sentences.

    Returns folder_id -> (class name, sentence)."""
    l2t = [ln for ln in Path(label2text).read_text("utf-8").splitlines() if ln.strip()]
    sents = [ln.strip() for ln in Path(chatgpt).read_text("utf-8").splitlines() if ln.strip()]
    if len(l2t) != len(sents):
        raise DataError(
            f"{label2text} has {len(l2t)} lines but {chatgpt} has {len(sents)}; they must be aligned"
        )
    out = {}
    for line, sent in zip(l2t, sents):
        parts = line.split(maxsplit=2)
        if len(parts) < 2:
            raise DataError(f"{label2text}: line {line!r} must be 'folder_id running_id natural_name'")
        # the released files carry a running class id between the folder and the natural name
        name = parts[2] if len(parts) == 3 and parts[1].isdigit() else " ".join(parts[1:])
        out[parts[0]] = (name.strip(), sent)
    return out


def _match(class_names: list[str], table: dict[str, list[str]], source: str) -> list[list[str]]:
    """Sentences per class, matched by exact name, folder id, or name with underscores/case normalised."""
    norm = {display_name(k).lower(): v for k, v in table.items()}
    out = []
    for c in class_names:
        got = table.get(c) or norm.get(display_name(c).lower())
        if not got:
            raise DataError(
                f"no sentence for class {c!r} in {source}; its keys must be this dataset's class names "
                f"(folder names: {', '.join(class_names[:8])}); add one or drop classtext.sentences_file"
            )
        out.append(list(got))
    return out


def sentences_from_file(class_names: list[str], path: str | Path, label2text: str | Path | None = None):
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"classtext.sentences_file {str(path)!r} not found")
    if label2text:
        pairs = read_label2text(label2text, p)
        table: dict[str, list[str]] = {}
        for folder, (name, sent) in pairs.items():
            table.setdefault(folder, []).append(sent)
            table.setdefault(name, []).append(sent)
        return _match(class_names, table, f"{label2text} + {path}")
    if p.suffix == ".json":
        data = json.loads(p.read_text("utf-8"))
        data = {k: ([v] if isinstance(v, str) else list(v)) for k, v in data.items() if not k.startswith("_")}
        return _match(class_names, data, str(path))
    lines = [ln.strip() for ln in p.read_text("utf-8").splitlines() if ln.strip()]
    if len(lines) != len(class_names):
        raise DataError(
            f"{path} has {len(lines)} lines for {len(class_names)} classes; one sentence per class"
        )
    return [[s] for s in lines]


def sentences_openai(class_names: list[str], cfg: Any) -> list[list[str]]:
    from concurrent.futures import ThreadPoolExecutor

    if not cfg.llm_base_url or not cfg.llm_model:
        raise ConfigError(
            "classtext.sentences_backend=openai needs classtext.llm_base_url and classtext.llm_model; without an "
            f"LLM, write the sentences yourself ({OFFLINE_ROUTE})"
        )
    if cfg.llm_api_key_env and not os.environ.get(cfg.llm_api_key_env):
        raise ConfigError(
            f"environment variable {cfg.llm_api_key_env} (classtext.llm_api_key_env) is not set; export the "
            f"LLM's key, or set classtext.llm_api_key_env=null for a server without one; no LLM: {OFFLINE_ROUTE}"
        )
    check_server(cfg.llm_base_url, "the LLM server (classtext.llm_base_url)")  # fail fast, not after retries
    client = ChatClient(cfg.llm_base_url, cfg.llm_model, cfg.llm_api_key_env, cfg.timeout_s, cfg.max_retries)
    params: dict[str, Any] = {"max_tokens": int(cfg.max_new_tokens), "temperature": float(cfg.temperature)}

    def one(job: tuple[int, int]) -> str:
        c, j = job
        prompt = fill(cfg.llm_prompt, display_name(class_names[c]))
        d = client.complete([{"role": "user", "content": prompt}], **params, seed=j)
        if not d.ok:
            raise ConfigError(f"the LLM failed for class {class_names[c]!r}: {d.error}")
        return d.text

    jobs = [(c, j) for c in range(len(class_names)) for j in range(cfg.n_sentences)]
    with ThreadPoolExecutor(max(1, cfg.concurrency)) as pool:
        texts = list(pool.map(one, jobs))
    return [texts[c * cfg.n_sentences : (c + 1) * cfg.n_sentences] for c in range(len(class_names))]


def sentences_transformers(class_names: list[str], cfg: Any) -> list[list[str]]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not cfg.llm_model:
        raise ConfigError("classtext.llm_model is required for the transformers sentence backend")
    device = resolve_device(cfg.device)
    kw = {"revision": cfg.llm_revision, "trust_remote_code": cfg.trust_remote_code}
    tok = AutoTokenizer.from_pretrained(cfg.llm_model, **kw)
    model = AutoModelForCausalLM.from_pretrained(cfg.llm_model, **kw).to(device).eval()
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    prompts = []
    for c in class_names:
        p = fill(cfg.llm_prompt, display_name(c))
        if getattr(tok, "chat_template", None):
            p = tok.apply_chat_template(
                [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False
            )
        prompts.append(p)
    sample = cfg.temperature > 0
    gen = {"max_new_tokens": cfg.max_new_tokens, "do_sample": sample, "num_return_sequences": cfg.n_sentences}
    if sample:
        gen["temperature"] = cfg.temperature
    out = []
    with torch.no_grad():
        for s in range(0, len(prompts), 16):
            enc = tok(prompts[s : s + 16], return_tensors="pt", padding=True).to(device)
            ids = model.generate(**enc, **gen, pad_token_id=tok.pad_token_id)[:, enc["input_ids"].shape[1] :]
            texts = [" ".join(t.split()) for t in tok.batch_decode(ids, skip_special_tokens=True)]
            for i in range(len(texts) // cfg.n_sentences):
                out.append(texts[i * cfg.n_sentences : (i + 1) * cfg.n_sentences])
    return out


def load_sentences(class_names: list[str], cfg: Any) -> list[list[str]] | None:
    backend = cfg.sentences_backend
    if backend is None and (cfg.sentences_file or cfg.label2text_file):
        backend = "file"
    if backend is None:
        return None
    if backend == "file":
        if not cfg.sentences_file:
            raise ConfigError("classtext.sentences_backend=file needs classtext.sentences_file")
        return sentences_from_file(class_names, cfg.sentences_file, cfg.label2text_file)
    if backend == "openai":
        return sentences_openai(class_names, cfg)
    if backend == "transformers":
        return sentences_transformers(class_names, cfg)
    raise ConfigError(f"classtext.sentences_backend {backend!r} must be openai, transformers, file or null")


# ---------------------------------------------------------------------------------------- the stage


def classtext_key(class_names: list[str], cfg: Any) -> str:
    src: dict[str, Any] = {"backend": cfg.sentences_backend}
    if cfg.sentences_file:
        src["file"] = (
            Path(cfg.sentences_file).read_text("utf-8") if Path(cfg.sentences_file).is_file() else None
        )
    if cfg.label2text_file:
        p = Path(cfg.label2text_file)
        src["label2text"] = p.read_text("utf-8") if p.is_file() else None
    if cfg.sentences_backend in ("openai", "transformers"):
        src.update(
            model=cfg.llm_model,
            revision=cfg.llm_revision,
            prompt=cfg.llm_prompt,
            n=cfg.n_sentences,
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
        )
    return artifact_key(
        {
            "classes": list(class_names),
            "templates": list(cfg.templates),
            "enriched": cfg.enriched,
            "enriched_template": cfg.enriched_template,
            "sentences": src,
        }
    )


def build_class_texts(
    class_names: list[str],
    cfg: Any,
    embed_cfg: Any = None,
    encoder: Any = None,
    shard: Any = None,
    merge: str = "auto",
) -> Path:
    """Write `<output>/<key16>/classtexts.json` and, with an encoder or embed config, its embedding store
    (`<output>/<key16>/embeddings/`, ids "<class>#<j>"). Reuses what exists with the same key.
    Under torchrun every rank calls it: rank 0 writes the texts while the others wait, then the ranks share the
    embedding (`embed_texts`); `shard="I/N"` splits the embedding of a job array, `merge="only"` merges it."""

    key = classtext_key(class_names, cfg)
    folder = Path(cfg.output) / key[:16]
    path = folder / "classtexts.json"
    split = work_split(shard)
    if merge == "only" and not path.is_file():  # a merge computes nothing (no LLM call either)
        raise ArtifactError(f"classtext: no texts in {str(folder)!r}; run every `--shard I/N` first")
    build_once(
        split,
        lambda: path.is_file() and read_json(path).get("key") == key,
        lambda: _write_class_texts(path, key, class_names, cfg),
    )
    data = read_json(path)
    if encoder is None and embed_cfg is not None:
        encoder = build_text_encoder(
            embed_cfg.encoder, embed_cfg.model, embed_cfg.revision, embed_cfg.device, embed_cfg.batch_size
        )
    complete = True
    if encoder is not None:
        flat = [t for ts in data["texts"] for t in ts]
        ids = [f"{c}#{j}" for c, ts in enumerate(data["texts"]) for j in range(len(ts))]
        store = embed_texts(
            flat,
            encoder,
            folder / "embeddings",
            ids,
            extra_meta={"source": "classtext", "source_key": key, "class_names": list(class_names)},
            shard=shard,
            merge=merge,
            command="vlmkd classtext CONFIG",
        )
        complete = store is not None  # a job array's partial run: LATEST waits for the merge
    if complete and (split.rank == 0 or not split.collective):
        write_json(Path(cfg.output) / "LATEST", {"key": key, "folder": key[:16]})
    return folder


def _write_class_texts(path: Path, key: str, class_names: list[str], cfg: Any) -> None:
    sentences = load_sentences(class_names, cfg)
    data = {
        "key": key,
        "class_names": list(class_names),
        "texts": class_texts(class_names, cfg, sentences),
        "sentences": sentences,
        "source": cfg.sentences_backend or ("file" if cfg.sentences_file else "templates"),
    }
    write_json(path, data)


def dataset_class_names(manifests: dict[str, Any], split: str = "train") -> list[str]:
    """Every class of the dataset, base and novel alike, in dataset order (image folders: sorted folder names).

    With a base/novel split the training manifest lists only the base classes; class texts must also cover the
    novel ones (zero-shot evaluation, few-shot, generalized scoring and exports embed them)."""
    m = manifests[split]
    if m.source.get("all_classes"):  # ood_lists: the lists fix base and novel
        return list(m.source["all_classes"])
    train, ood = manifests.get("train"), manifests.get("ood")
    src = train.source if train is not None else {}
    if ood is None or "base_classes" not in src:
        return list(m.class_names)
    names = [""] * (len(src["base_classes"]) + len(src["novel_classes"]))
    for ids, listed in ((src["base_classes"], train.class_names), (src["novel_classes"], ood.class_names)):
        for i, n in zip(ids, listed):
            names[i] = n
    return names


def load_class_texts(path: str | Path) -> dict[str, Any]:
    """The classtexts.json of a classtext folder (or its parent, through LATEST)."""

    return read_json(resolve_store(path, marker="classtexts.json") / "classtexts.json")
