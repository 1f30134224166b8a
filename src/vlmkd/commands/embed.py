"""`vlmkd embed CONFIG`: embed texts (by default the descriptions of this config) with a registered text encoder."""

from __future__ import annotations

import argparse
from pathlib import Path

from vlmkd.commands._args import add_config_args
from vlmkd.commands._shards import MERGE_HINT, add_shard_args, start_workers


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "embed", help="embed descriptions or texts with a text encoder (deduplicated, float16)"
    )
    add_config_args(p)
    p.add_argument(
        "--input",
        default=None,
        help="a description store, a classtext folder, or a .txt/.json file (default: embed.input, "
        "else the describe.output store)",
    )
    p.add_argument("--list", action="store_true", help="list the registered text encoders and exit")
    add_shard_args(p, "embed")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vlmkd.config import load_config
    from vlmkd.describe.store import DescriptionStore
    from vlmkd.errors import ArtifactError
    from vlmkd.text import build_text_encoder, embed_descriptions, embed_texts, list_text_encoders
    from vlmkd.text.store import read_texts_file

    if args.list:
        print("\n".join(list_text_encoders()))
        return 0
    cfg = load_config(args.config, args.overrides)
    ec = cfg.embed
    src = args.input or ec.input or cfg.describe.output
    device, split = start_workers(args, ec.device)
    enc = build_text_encoder(ec.encoder, ec.model, ec.revision, device, ec.batch_size)
    p = Path(src)
    kw = {"shard": args.shard, "merge": "only" if args.merge else "auto"}
    if p.is_file():
        texts, ids = read_texts_file(p)
        store = embed_texts(texts, enc, ec.output, ids, ec.batch_size, {"source": str(p)}, **kw)
    else:
        try:
            desc = DescriptionStore(p)
        except ArtifactError:
            raise ArtifactError(
                f"{src!r} is not a description store or a text file; run `vlmkd describe` first "
                "(class texts are embedded by `vlmkd classtext`)"
            ) from None
        store = embed_descriptions(desc, enc, ec.output, ec.batch_size, **kw)
    if store is None:
        print(f"embed: shards of process {split.rank}/{split.world} written (merge: {MERGE_HINT})")
    elif split.rank == 0 or not split.collective:
        m = store.meta
        print(
            f"{m['count']} texts ({m['unique_texts']} distinct) x {m['dim']} with {m['encoder_id']} -> {store.path}"
        )
    return 0
