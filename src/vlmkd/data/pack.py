"""`vlmkd data pack`: any supported dataset -> size-targeted WebDataset tar shards, and a manifest per split.

Each sample is written as `<n>.cls` (the label), `<n>.json` ({"id", "path", "label", "class"}) and `<n>.<ext>`
(the image file's bytes, unchanged: no re-encoding, so its content key, the sha256 of those bytes, is the one the
file had and descriptions made over the files are found again). Label and metadata come before the image, so a
shard cut inside an image still names the sample's key and label. Array-backed datasets (Fashion-MNIST, CIFAR)
are written as PNG.

Next to the shards: `classes.txt` (one class name per line), `<split>.json` (a vlmkd manifest over the shards:
`data.format=manifest` reads it) and `pack.json` (per split: the shard list, sample count, and the manifest key of
the source, which a manifest read back from shards of a folder of files keeps: artifacts built for the files stay
valid).
"""

from __future__ import annotations

import io
import json
import logging
import re
import tarfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vlmkd.data.images import open_image, sample_bytes
from vlmkd.data.manifest import Manifest
from vlmkd.data.paths import confined_path
from vlmkd.data.sharded import container_root, scheme_of
from vlmkd.errors import ConfigError, DataError
from vlmkd.utils.io import atomic_path, atomic_write, write_json
from vlmkd.utils.progress import progress

log = logging.getLogger(__name__)
_UNITS = {
    "": 1,
    "B": 1,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "KIB": 1024,
    "MIB": 1024**2,
    "GIB": 1024**3,
}
_CHUNK = 256  # samples read ahead in threads (bounded memory at any dataset size)


def parse_size(text: str | int) -> int:
    """ "256MB" -> 256_000_000; "1GiB", "500KB", plain byte counts."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?I?B?)\s*", str(text).upper())
    if not m or m.group(2) not in _UNITS or float(m.group(1)) <= 0:
        raise ConfigError(f"--shard-size must be a size like 256MB or 1GiB, got {text!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def _image_record(m: Manifest, i: int) -> tuple[bytes, str]:
    """(bytes, extension) of sample i as stored: the file's bytes, a container member's bytes, or PNG of a row."""
    if m.indices is not None:
        buf = io.BytesIO()
        Image.fromarray(np.asarray(open_image(m, i, as_array=True))).save(buf, format="PNG")
        return buf.getvalue(), "png"
    if scheme_of(m.root):  # re-packing shards or Parquet: the extension from the bytes' own format
        data, _ = sample_bytes(m, i)
        return data, _sniffed_ext(data)
    path = confined_path(m.root, m.paths[i])
    try:
        return path.read_bytes(), _ext(path.name)
    except OSError as e:
        raise DataError(
            f"image {m.paths[i]!r} cannot be read ({e.strerror}); fix it or set data.on_bad_image=skip"
        ) from None


def _sniffed_ext(data: bytes) -> str:
    try:
        with Image.open(io.BytesIO(data)) as im:  # the header only
            fmt = (im.format or "").lower()
    except Exception:  # an undecodable image stays an image member: reading it applies data.on_bad_image
        return "jpg"
    return {"jpeg": "jpg", "mpo": "jpg"}.get(fmt, fmt or "jpg")


def _ext(name: str) -> str:
    ext = name.rsplit(".", 1)[-1].lower() if "." in name.rsplit("/", 1)[-1] else "jpg"
    return "jpg" if ext == "jpeg" else ext


class ShardWriter:
    """Tar shards `<prefix>-000000.tar`, ... of about `max_bytes` each (a sample never straddles two)."""

    def __init__(self, out: Path, prefix: str, max_bytes: int):
        self.out, self.prefix, self.max_bytes = out, prefix, max_bytes
        self.paths: list[Path] = []
        self._ctx = self._tar = None
        self._size = 0

    def _next(self) -> None:
        self.close()
        path = self.out / f"{self.prefix}-{len(self.paths):06d}.tar"
        self.paths.append(path)
        self._ctx = atomic_path(path)  # a killed pack leaves no half shard under a final name
        self._tar = tarfile.open(self._ctx.__enter__(), "w", format=tarfile.USTAR_FORMAT)  # noqa: SIM115
        self._size = 0

    def write(self, key: str, fields: dict[str, bytes]) -> None:
        size = sum(512 + (len(v) + 511) // 512 * 512 for v in fields.values())
        if self._tar is None or (self._size and self._size + size > self.max_bytes):
            self._next()
        for ext, data in fields.items():
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = (
                len(data),
                0,
                0o644,
            )  # mtime 0: the same input packs the same bytes
            self._tar.addfile(info, io.BytesIO(data))
        self._size += size

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._ctx.__exit__(None, None, None)
            self._tar = self._ctx = None


def _records(m: Manifest, on_bad: str) -> Iterator[tuple[int, bytes | None, str]]:
    def one(i: int) -> tuple[int, bytes | None, str]:
        try:
            return (i, *_image_record(m, i))
        except DataError as e:
            if on_bad != "skip":
                raise
            log.warning("not packed (data.on_bad_image=skip): %s", e)
            return i, None, ""

    with ThreadPoolExecutor(8) as pool:
        for start in range(0, len(m), _CHUNK):
            yield from pool.map(one, range(start, min(len(m), start + _CHUNK)))


def pack_split(
    m: Manifest,
    out: Path,
    split: str,
    max_bytes: int,
    on_bad: str = "error",
    extra: Callable[[int], dict[str, bytes]] | None = None,
) -> dict[str, Any]:
    """Write one split's shards and its manifest; returns its pack.json entry. `extra(i)`: more members of
    sample i ({extension: bytes}; `vlmkd export-dataset` stores the teacher's outputs per sample this way)."""
    writer = ShardWriter(out, split, max_bytes)
    kept, skipped = [], []
    paths = m.paths if m.paths is not None else m.ids
    try:
        for i, data, ext in progress(_records(m, on_bad), total=len(m), desc=f"packing {split}", unit="img"):
            if data is None:
                skipped.append(str(paths[i]))
                continue
            label = int(m.labels[i])
            meta = {"id": str(m.ids[i]), "path": str(paths[i]), "label": label, "class": m.class_names[label]}
            fields = {
                "cls": str(label).encode(),
                "json": json.dumps(meta, ensure_ascii=False).encode(),
                ext: data,
                **(extra(i) if extra is not None else {}),
            }
            writer.write(f"{len(kept):09d}", fields)
            kept.append(i)
    finally:
        writer.close()
    n = len(writer.paths)
    spec = str(out.resolve() / f"{split}-{{000000..{max(n - 1, 0):06d}}}.tar") if n else ""
    source_key = m.key()
    sub = m.subset(np.asarray(kept, dtype=np.int64)) if len(kept) < len(m) else m
    packed = Manifest(
        ids=sub.ids,
        labels=sub.labels,
        class_names=list(sub.class_names),
        root=container_root("wds", spec),
        paths=sub.paths if sub.paths is not None else sub.ids,
        source=dict(sub.source) if sub.indices is None else {},
        split=sub.split,
    )
    packed.save(out / f"{split}.json")
    return {
        "shards": [p.name for p in writer.paths],
        "spec": spec,
        "samples": len(kept),
        "skipped": skipped,
        "source_manifest_key": source_key,
        "manifest_key": packed.key(),
    }


def pack(
    splits: dict[str, Manifest],
    out: str | Path,
    max_bytes: int,
    on_bad: str = "error",
    extra: dict[str, Callable[[int], dict[str, bytes]]] | None = None,
) -> dict[str, Any]:
    """Pack every split into `out`; writes classes.txt, <split>.json and pack.json; returns pack.json's content."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if any(out.glob("*.tar")):
        raise ConfigError(f"{str(out)!r} already holds .tar shards; pack into an empty folder")
    train = splits["train"]
    names = "".join(f"{c}\n" for c in train.class_names)
    atomic_write(out / "classes.txt", lambda p: p.write_text(names, encoding="utf-8"))
    info = {"shard_bytes": max_bytes, "class_names": list(train.class_names), "splits": {}}
    for split, m in splits.items():
        info["splits"][split] = pack_split(m, out, split, max_bytes, on_bad, (extra or {}).get(split))
    write_json(out / "pack.json", info)
    return info
