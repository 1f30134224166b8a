"""Writing a student as ONNX, TorchScript or safetensors, and running any of them again (the runtimes).

Every exported graph takes one float32 input `image` (N x C x H x W, already preprocessed as `preprocess.json`
says; N is dynamic) and returns named outputs: `logits` (classifier head) and/or `embedding` (embedding head; for
a zero-shot export it is L2-normalised inside the graph, and logits are `embedding @ class_text.T / temperature`).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vlmkd.errors import ArtifactError, ConfigError
from vlmkd.students.io import load_student

FORMATS = ("onnx", "torchscript", "safetensors")
MODEL_FILES = {
    "onnx": "model.onnx",
    "torchscript": "model.torchscript.pt",
    "safetensors": "student.safetensors",
}
ONNX_OPSET = 17


class ExportWrapper(nn.Module):
    """The student as a graph with a tuple of named outputs (tracers and ONNX need tensors, not dicts)."""

    def __init__(self, student: nn.Module, outputs: tuple[str, ...], normalize_embedding: bool = False):
        super().__init__()
        self.student, self.outputs, self.normalize_embedding = student, tuple(outputs), normalize_embedding

    def forward(self, image: torch.Tensor):
        out = self.student(image)
        res = []
        for name in self.outputs:
            t = out[name]
            if name == "embedding" and self.normalize_embedding:
                t = t / t.norm(dim=1, keepdim=True).clamp_min(1e-12)
            res.append(t)
        return tuple(res)


def output_names(student: nn.Module, head: str) -> tuple[str, ...]:
    has_cls = getattr(student, "classifier", None) is not None
    has_emb = getattr(student, "proj", None) is not None
    if head == "classifier":
        if not has_cls:
            raise ConfigError(
                "this student has no classifier head (model.head=embedding); export with --head zero_shot"
            )
        return ("logits", "embedding") if has_emb else ("logits",)
    if head == "zero_shot":
        if not has_emb:
            raise ConfigError(
                "this student has no embedding head (model.head=classifier); export with --head classifier"
            )
        return ("embedding",)
    raise ConfigError(f"--head must be classifier or zero_shot, got {head!r}")


def write_onnx(wrapper: ExportWrapper, path: Path, example: torch.Tensor, opset: int = ONNX_OPSET) -> None:
    import importlib.util

    # torch's exporters need onnx (and onnxscript for the dynamo one); without them torch raises a two-exporter
    # traceback that does not say what to install
    missing = [m for m in ("onnx", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f'ONNX export needs {" and ".join(missing)}: pip install "vlmkd[export]"')
    dyn = {n: {0: "batch"} for n in ("image", *wrapper.outputs)}
    kw = dict(input_names=["image"], output_names=list(wrapper.outputs), opset_version=opset)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:  # the TorchScript-based exporter: fast and exact for CNN students
            torch.onnx.export(wrapper, (example,), str(path), dynamo=False, dynamic_axes=dyn, **kw)
        except Exception as legacy_error:  # e.g. an op only the torch.export-based exporter knows
            try:
                torch.onnx.export(
                    wrapper,
                    (example,),
                    str(path),
                    dynamo=True,
                    dynamic_shapes={"image": {0: torch.export.Dim("batch")}},
                    **kw,
                )
            except Exception as e:
                raise ArtifactError(
                    f"ONNX export failed ({type(legacy_error).__name__}: {legacy_error}; "
                    f"dynamo exporter: {type(e).__name__}: {e})"
                ) from None
    import onnx

    onnx.checker.check_model(str(path))


def write_torchscript(wrapper: ExportWrapper, path: Path, example: torch.Tensor) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated in favour of torch.export, still supported
        traced = torch.jit.trace(wrapper, (example,), check_trace=False)
        traced.save(str(path))


# ------------------------------------------------------------------------------------------------- runtimes


class TorchRuntime:
    """A PyTorch student (run folder, student.safetensors, or a safetensors export)."""

    def __init__(
        self,
        student: nn.Module,
        outputs: tuple[str, ...],
        normalize_embedding: bool = False,
        device: str = "cpu",
    ):
        self.device = torch.device(device)
        self.module = ExportWrapper(student, outputs, normalize_embedding).to(self.device).eval()
        self.outputs = tuple(outputs)

    @torch.no_grad()
    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        res = self.module(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device))
        return {n: t.float().cpu().numpy() for n, t in zip(self.outputs, res)}


class TorchScriptRuntime(TorchRuntime):
    def __init__(self, path: Path, outputs: tuple[str, ...], device: str = "cpu"):
        self.device = torch.device(device)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                self.module = torch.jit.load(str(path), map_location=self.device).eval()
            except Exception as e:
                raise ArtifactError(
                    f"cannot load TorchScript model {str(path)!r} ({type(e).__name__}: {e})"
                ) from None
        self.outputs = tuple(outputs)

    @torch.no_grad()
    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return super().__call__(x)


class OnnxRuntime:
    def __init__(self, path: Path, threads: int = 0):
        try:
            import onnxruntime as ort
        except ImportError:
            raise ConfigError("running an ONNX export needs onnxruntime: pip install vlmkd[export]") from None
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise ArtifactError(f"cannot load ONNX model {str(path)!r} ({type(e).__name__}: {e})") from None
        self.input_name = self.session.get_inputs()[0].name
        self.outputs = tuple(o.name for o in self.session.get_outputs())

    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        res = self.session.run(None, {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})
        return dict(zip(self.outputs, res))


def load_runtime(export_dir: Path, manifest: dict[str, Any], device: str = "cpu"):
    fmt = manifest.get("format")
    outputs = tuple(manifest.get("outputs", ("logits",)))
    if fmt == "onnx":
        return OnnxRuntime(export_dir / manifest.get("model_file", MODEL_FILES["onnx"]))
    if fmt == "torchscript":
        return TorchScriptRuntime(
            export_dir / manifest.get("model_file", MODEL_FILES["torchscript"]), outputs, device
        )
    if fmt == "safetensors":
        student, _ = load_student(export_dir)
        return TorchRuntime(student, outputs, manifest.get("head") == "zero_shot", device)
    raise ArtifactError(
        f"{str(export_dir)!r}: unknown export format {fmt!r} in export.json; re-run `vlmkd export`"
    )
