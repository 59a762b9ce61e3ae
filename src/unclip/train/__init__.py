"""unclip.train: the one training loop for every stage (``run_training``), its config and task protocol."""

from unclip.train.config import TrainConfig
from unclip.train.loop import TrainResult, run_training
from unclip.train.task import TrainTask

__all__ = ["TrainConfig", "TrainResult", "TrainTask", "run_training"]
