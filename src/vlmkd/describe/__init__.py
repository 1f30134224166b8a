"""Describers (transformers, OpenAI-compatible HTTP, interrogate) and the description store.

describer = build_describer(cfg.describe, teacher=None)
folder = describe_manifest(manifest, cfg.describe, describer)      # resumable, keyed per image, shardable
DescriptionStore(folder).load()                                    # {"sample_id", "index", "k", "text", ...}
(see `store.py` for the layout: a row log keyed by image content, one view per manifest)
"""

from __future__ import annotations

from vlmkd.describe import hf as _hf  # noqa: F401  (registers "transformers")
from vlmkd.describe import http as _http  # noqa: F401  (registers "openai")
from vlmkd.describe import interrogate as _interrogate  # noqa: F401  (registers "interrogate")
from vlmkd.describe.base import DESCRIBERS, Description, build_describer, list_describers
from vlmkd.describe.estimate import estimate_cost
from vlmkd.describe.run import describe_manifest, description_key, merge_view
from vlmkd.describe.store import DescriptionStore
from vlmkd.utils.dist import parse_shard

__all__ = [
    "DESCRIBERS",
    "Description",
    "DescriptionStore",
    "build_describer",
    "describe_manifest",
    "description_key",
    "estimate_cost",
    "list_describers",
    "merge_view",
    "parse_shard",
]
