"""The composition root: commands and the demo compose a run here; the layers below receive built objects."""

from vlmkd.compose.train import TrainingRun, build_run

__all__ = ["TrainingRun", "build_run"]
