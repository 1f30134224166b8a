"""`vlmkd describe --dry-run`: describe a few images (nothing stored), extrapolate time and tokens to the split,
and the wall time for 1, 2, 4, 8 servers from the measured latency of one request."""

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
    t0, tally = time.time(), Tally()
    images = _load(manifest, idx, describer.identity().get("max_side"))
    keys = np.zeros(len(idx), dtype="S32")
    rows = describe_chunk(describer, manifest, idx, keys, images, n, "skip", tally)
    dt = time.time() - t0
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
        "estimated_seconds": round(dt / len(idx) * len(manifest), 1),
        "descriptions": total,
        "failure_rate": round(tally.failed / max(tally.ok + tally.failed, 1), 3),
        "failure_reasons": [f"{t} ({c}x)" for t, c in tally.errors.most_common(3)],
        "skipped_images": len(tally.skipped),
        "prompt_tokens_per_description": pt,
        "completion_tokens_per_description": ct,
        "estimated_prompt_tokens": round(pt * total) if pt is not None else None,
        "estimated_completion_tokens": round(ct * total) if ct is not None else None,
        "examples": [r["text"] for r in ok[:3]],
        **_wall_by_servers(describer, total),
    }


def _wall_by_servers(describer: Any, total: int) -> dict[str, Any]:
    """Wall time for 1..8 servers from the measured latency of one request (openai backend)."""
    client = getattr(describer, "client", None)
    latency = client.mean_latency_s() if client is not None else None
    out: dict[str, Any] = {"per_request_latency_s": round(latency, 4) if latency else None}
    if latency:
        per_server = client.pool.endpoints[0].max_limit
        out["estimated_seconds_by_servers"] = {
            str(s): round(total * latency / (s * per_server), 2)
            for s in (1, 2, 4, 8, len(client.pool.endpoints))
        }
    return out
