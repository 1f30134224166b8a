"""The student factory: every head on timm families whose pooled output is wider than `num_features`."""

import pytest
import torch

from vlmkd.students import create_student, student_from_spec, student_spec


@pytest.mark.parametrize("name", ["resnet18", "mobilenetv3_small_100", "efficientnet_b0", "cnn_tiny"])
def test_both_heads_fit_the_backbones_pooled_output(name):
    """MobileNetV3's head conv follows the pooling (num_features 576, output 1024): heads sized from
    num_features failed on the first batch."""
    torch.manual_seed(0)
    s = create_student(name, num_classes=5, in_chans=3, head="both", embed_dim=16)
    out = s.eval()(torch.randn(2, 3, 64, 64))
    assert out["logits"].shape == (2, 5) and out["embedding"].shape == (2, 16)
    rebuilt = student_from_spec(student_spec(name, s, 3))
    rebuilt.load_state_dict(s.state_dict())  # the spec rebuilds the same shapes
