"""Tasks and minimal training loops that write run archives through :mod:`ckptlab.store`."""

from .config import TrainConfig, apply_overrides, checkpoint_steps
from .loop import TrainResult, train
from .presets import PRESETS, get_preset
from .study import StudyResult, study

__all__ = ["TrainConfig", "apply_overrides", "checkpoint_steps", "train", "TrainResult",
           "PRESETS", "get_preset", "study", "StudyResult"]
