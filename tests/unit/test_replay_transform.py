"""Replayable training transforms: drawing a view's parameters and re-applying them gives the same tensor."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from vlmkd.config import DataConfig
from vlmkd.data.transforms import build_transform, norm_stats
from vlmkd.data.views import NUM_PARAMS, identity_params

CASES = [
    ("basic", 16, 1),  # the tensor fast path (pad-and-crop + flip)
    ("basic", 16, 3),
    ("randaugment", 16, 3),  # the PIL pipeline at small size
    ("basic", 72, 3),  # RandomResizedCrop
    ("randaugment", 72, 3),
    ("none", 16, 3),
]


def _image(seed: int, size: tuple[int, int] = (20, 24)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8))


@pytest.mark.parametrize("augment,size,chans", CASES)
def test_replayed_parameters_give_the_drawn_view_pixel_for_pixel(augment, size, chans):
    tf = build_transform(DataConfig(image_size=size, in_chans=chans, augment=augment), train=True)
    for seed in range(6):
        for img in (_image(seed, (size, size)), _image(seed, (size + 9, size + 17))):
            torch.manual_seed(seed)
            x, params = tf.draw(img)
            assert params.shape == (NUM_PARAMS,) and params.dtype == np.int32
            torch.manual_seed(1234)  # replay draws nothing: another generator state changes nothing
            assert torch.equal(tf.replay(img, params), x)


def test_views_differ_with_their_parameters():
    tf = build_transform(DataConfig(image_size=72, in_chans=3, augment="basic"), train=True)
    img = _image(0, (90, 110))
    torch.manual_seed(0)
    x0, p0 = tf.draw(img)
    x1, p1 = tf.draw(img)
    assert not np.array_equal(p0, p1) and not torch.equal(x0, x1)
    assert torch.equal(tf.replay(img, p1), x1)


def test_the_replayable_pipeline_draws_as_torchvision_does():
    """Seeded runs keep their augmentations: same draws, same order, same pixels as the torchvision Compose."""
    cfg = DataConfig(image_size=72, in_chans=3, augment="randaugment")
    mean, std = norm_stats(cfg)
    reference = T.Compose(
        [
            T.Lambda(lambda im: im.convert("RGB")),
            T.RandomResizedCrop(72, scale=(0.08, 1.0)),
            T.RandomHorizontalFlip(),
            T.RandAugment(num_ops=2, magnitude=9),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )
    tf = build_transform(cfg, train=True)
    for seed in range(8):
        img = _image(seed, (80, 96))
        torch.manual_seed(seed)
        want = reference(img)
        torch.manual_seed(seed)
        assert torch.equal(tf(img), want)


def test_identity_parameters_of_an_unaugmented_view():
    tf = build_transform(DataConfig(image_size=16, in_chans=3, augment="none"), train=True)
    img = _image(3, (16, 16))
    x, params = tf.draw(img)
    np.testing.assert_array_equal(params, identity_params(16, 16))
    assert torch.equal(x, build_transform(DataConfig(image_size=16, in_chans=3), train=False)(img))


def test_view_choice_is_a_function_of_seed_epoch_and_sample_and_spreads_over_the_views():
    from vlmkd.teachers.replay import view_choice

    first = [view_choice(0, 1, i, 10) for i in range(5000)]
    assert first == [view_choice(0, 1, i, 10) for i in range(5000)]  # no hidden state
    assert first != [view_choice(0, 2, i, 10) for i in range(5000)]  # a new epoch, new views
    assert first != [view_choice(1, 1, i, 10) for i in range(5000)]  # another seed
    counts = np.bincount(first, minlength=10)
    assert counts.min() > 400 and counts.max() < 600  # 500 expected per view
