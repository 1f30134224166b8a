"""TeacherView: the student's normalised batch in the teacher's input space (consistent-view distillation)."""

import torch

from vlmkd.teachers.view import TeacherView


def test_same_preprocessing_is_identity():
    pre = {"image_size": 16, "in_chans": 3, "mean": [0.4, 0.5, 0.6], "std": [0.2, 0.25, 0.3]}
    x = torch.randn(2, 3, 16, 16)
    assert torch.allclose(TeacherView(pre, pre)(x), x, atol=1e-6)


def test_grey_student_to_rgb_teacher_with_resize():
    student = {"image_size": 8, "in_chans": 1, "mean": [0.5], "std": [0.25]}
    teacher = {"image_size": 16, "in_chans": 3, "mean": [0.1, 0.2, 0.3], "std": [0.5, 0.5, 0.5]}
    pixels = torch.rand(2, 1, 8, 8)
    out = TeacherView(student, teacher)((pixels - 0.5) / 0.25)
    assert out.shape == (2, 3, 16, 16)
    raw = out * 0.5 + torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1)  # back to [0, 1] pixels
    assert torch.allclose(raw[:, 0], raw[:, 1], atol=1e-5) and torch.allclose(raw[:, 0], raw[:, 2], atol=1e-5)
    expected = torch.nn.functional.interpolate(pixels, size=(16, 16), mode="bilinear", antialias=True)
    assert torch.allclose(raw[:, :1], expected.clamp(0, 1), atol=1e-5)


def test_rgb_student_to_grey_teacher_uses_luma():
    student = {"image_size": 4, "in_chans": 3, "mean": [0.0], "std": [1.0]}
    teacher = {"image_size": 4, "in_chans": 1, "mean": [0.0], "std": [1.0]}
    x = torch.zeros(1, 3, 4, 4)
    x[:, 1] = 1.0  # pure green
    assert torch.allclose(TeacherView(student, teacher)(x), torch.full((1, 1, 4, 4), 0.587))
