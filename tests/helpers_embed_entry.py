"""`python -m vlmkd` for torchrun tests of the sharded embedding (`torchrun ... tests/helpers_embed_entry.py ARGS`).

Two changes, made in every process before the CLI runs:
- shards of EMBED_ROWS distinct texts instead of 65536, so a few texts make several shards for the ranks to split
  (what the job-array test does by monkeypatch, which cannot reach torchrun's processes);
- one stderr line per JSON written by the embedding / class-text stages ("wrote LATEST by process 1"), so a test can
  count who wrote each pointer and meta file.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

EMBED_ROWS = 5


def counted(write_json):
    def write(path, *args, **kwargs):
        print(f"wrote {Path(path).name} by process {os.environ.get('RANK', 0)}", file=sys.stderr, flush=True)
        return write_json(path, *args, **kwargs)

    return write


if __name__ == "__main__":
    import vlmkd.text.classtext as classtext
    import vlmkd.text.store as store
    from vlmkd.cli import main

    store.EMBED_SHARD = EMBED_ROWS
    store.write_json = counted(store.write_json)
    classtext.write_json = counted(classtext.write_json)
    sys.exit(main(sys.argv[1:]))
