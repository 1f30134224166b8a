"""Issue 19: adding 10 training images to a folder with a val carve-out describes exactly 10 images.

With the list-position carve-out, images that were in val before moved into train and were described too (49 new
images for 10 added on the issue's digits folder)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from conftest import make_image_folder
from helpers_chat_server import ChatServer
from vlmkd.cli import main
from vlmkd.config import load_config
from vlmkd.data import build_manifests


def test_adding_ten_images_sends_ten_requests(tmp_path):
    root = make_image_folder(tmp_path / "d", per_class=(30, 20, 10), size=8)
    art = tmp_path / "desc"
    with ChatServer() as srv:
        cfg = tmp_path / "c.yaml"
        cfg.write_text(
            f"data: {{format: image_folder, root: '{root}', val_fraction: 0.2}}\n"
            f"describe: {{backend: openai, model: m, base_url: '{srv.url}', concurrency: 4, output: '{art}'}}\n"
        )
        train_before = len(build_manifests(load_config(cfg).data)["train"])
        assert main(["describe", str(cfg)]) == 0
        assert srv.count() == train_before < 60  # the training split, each image once
        for i in range(10):
            img = np.full((8, 8, 3), 11 * i + 3, dtype=np.uint8)
            Image.fromarray(img).save(root / "train" / ("cat", "dog")[i % 2] / f"new_{i}.png")
        train_after = len(build_manifests(load_config(cfg).data)["train"])
        assert main(["describe", str(cfg)]) == 0
        new_requests = srv.count() - train_before
    # only the added images that landed in train are described; no earlier val image moved into train
    assert new_requests == train_after - train_before <= 10
