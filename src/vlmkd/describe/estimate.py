"""`vlmkd describe --dry-run`: describe a few images (nothing stored), extrapolate time and tokens to the split.

One time model gives every figure: the sample's measured throughput with the configured servers (after one
untimed warm-up request) times the split, in two parts: reading the images (the client's, as fast with any number
of servers) and the requests. `estimated_seconds` is the sum for the configured server count, and
`estimated_seconds_by_servers[s]` scales the request part by configured/s, so the entry for the configured count
IS `estimated_seconds` (they once came from two models: 71.9 s next to 2.13 s for 2 servers, for a run that took
29.5 s). The scaling assumes every added server is as fast as the measured ones.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from vlmkd.data.manifest import Manifest
from vlmkd.describe.run import Tally, _load, describe_chunk


def estimate_cost(manifest: Manifest, cfg: Any, describer: Any, sample: int = 16) -> dict[str, Any]:
    """Describe a few evenly spaced images (nothing is stored) and extrapolate time and tokens to the manifest."""
    n = int(cfg.n_descriptions)
    m = max(1, min(len(manifest), sample))
    idx = np.unique(np.linspace(0, len(manifest) - 1, m).round().astype(int)).tolist()
    max_side = describer.identity().get("max_side")
    # warm-up: a first request pays connection set-up and a server's first-call costs a long run pays once
    warm = _load(manifest, idx[:1], max_side)
    describe_chunk(describer, manifest, idx[:1], np.zeros(1, dtype="S32"), warm, 1, "skip", Tally())
    if getattr(describer, "client", None) is not None:
        describer.client.latencies.clear()  # the reported latency is the sample's
    tally = Tally()
    t0 = time.monotonic()
    # a run reads every image to key it by content before any request (the second read, to send it, overlaps
    # the requests): that part is the client's and does not shrink with more servers
    images = _load(manifest, idx, max_side)
    t1 = time.monotonic()
    keys = np.zeros(len(idx), dtype="S32")
    rows = describe_chunk(describer, manifest, idx, keys, images, n, "skip", tally)
    dt = time.monotonic() - t0
    read_s, describe_s = (t1 - t0) / len(idx) * len(manifest), (dt - (t1 - t0)) / len(idx) * len(manifest)
    ok = [r for r in rows if r["status"] == "ok"]

    def per_description(col: str) -> float | None:
        v = [r[col] for r in ok if r[col] >= 0]
        return float(np.mean(v)) if v else None

    pt, ct, total = per_description("prompt_tokens"), per_description("completion_tokens"), len(manifest) * n
    return {
        "backend": describer.backend,
        "sample_images": len(idx),
        "sample_seconds": round(dt, 3),
        "images_per_second": round(len(idx) / max(dt, 1e-9), 3),
        "estimated_seconds": round(read_s + describe_s, 2),
        "estimated_read_seconds": round(read_s, 2),
        "descriptions": total,
        "failure_rate": round(tally.failed / max(tally.ok + tally.failed, 1), 3),
        "failure_reasons": [f"{t} ({c}x)" for t, c in tally.errors.most_common(3)],
        "skipped_images": len(tally.skipped),
        "prompt_tokens_per_description": pt,
        "completion_tokens_per_description": ct,
        "estimated_prompt_tokens": round(pt * total) if pt is not None else None,
        "estimated_completion_tokens": round(ct * total) if ct is not None else None,
        "examples": [r["text"] for r in ok[:3]],
        **_wall_by_servers(describer, read_s, describe_s),
    }


def _wall_by_servers(describer: Any, read_s: float, describe_s: float) -> dict[str, Any]:
    """The one estimate at 1, 2, 4, 8 servers: the request part measured with the configured servers, scaled by
    their count; the client's reading stays as it is."""
    client = getattr(describer, "client", None)
    if client is None:  # one local model (transformers, interrogate): no servers to add
        return {}
    latency = client.mean_latency_s()
    configured = len(client.pool.endpoints)
    return {
        "per_request_latency_s": round(latency, 4) if latency else None,
        "servers_measured": configured,
        "estimated_seconds_by_servers": {
            str(s): round(read_s + describe_s * configured / s, 2) for s in sorted({1, 2, 4, 8, configured})
        },
    }
