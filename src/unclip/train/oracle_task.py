"""``OracleTask``: trains the shapes oracle (:mod:`unclip.models.oracle_net`) through the one loop.

Sample ``i`` is shapes-world scene ``i`` of ``ShapesWorld(data_seed, two_object_prob)``, rendered at
``low_size`` px when ``i`` is odd (then resized to the oracle's input size exactly as the oracle does)
and at the oracle's input size otherwise, so the oracle learns both resolutions. Training adds a little
Gaussian pixel noise (std uniform in [0, ``noise_std``]) drawn from the loop's generator.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unclip.config import save_config
from unclip.data.shapes import ShapesWorld, images_to_tensor
from unclip.io import atomic_write_text, save_safetensors
from unclip.measure.oracle import encode_records, evaluate_on_world, oracle_loss
from unclip.models.oracle_net import OracleConfig, ShapesOracle, resize_images


@dataclass
class OracleTaskConfig:
    """Data and loss settings of oracle training.

    Attributes:
        data_seed: shapes-world seed of the training data.
        two_object_prob: fraction of two-object scenes in training.
        low_size: the second training resolution (odd sample indices).
        noise_std: maximum std of the Gaussian noise added to training images (in [-1, 1] units).
        centre_weight: weight of the centre-regression MSE.
        eval_seed: world seed of the periodic evaluation (never used for training).
        eval_n: images per periodic evaluation.
        export_dtype: "float32" or "float16" storage of the exported weights.
    """

    data_seed: int = 1
    two_object_prob: float = 0.5
    low_size: int = 32
    noise_std: float = 0.03
    centre_weight: float = 10.0
    eval_seed: int = 999_001
    eval_n: int = 500
    export_dtype: str = "float16"

    def __post_init__(self) -> None:
        if self.export_dtype not in ("float32", "float16"):
            raise ValueError(f"export_dtype={self.export_dtype!r} must be 'float32' or 'float16'")
        if self.low_size < 8:
            raise ValueError(f"low_size={self.low_size} must be >= 8")
        if self.noise_std < 0:
            raise ValueError(f"noise_std={self.noise_std} must be >= 0")


class OracleTask:
    """:class:`~unclip.train.task.TrainTask` for the shapes oracle."""

    name = "oracle"

    def __init__(self, model_config: OracleConfig, config: OracleTaskConfig | None = None) -> None:
        self.model_config = model_config
        self.config = config if config is not None else OracleTaskConfig()
        self.world = ShapesWorld(seed=self.config.data_seed, two_object_prob=self.config.two_object_prob)

    def build_model(self) -> nn.Module:
        return ShapesOracle(self.model_config)

    def get_batch(self, indices: list[int], device: torch.device) -> dict[str, Any]:
        size = self.model_config.image_size
        samples = [self.world.sample(int(i)) for i in indices]
        images = []
        for i, s in zip(indices, samples):
            if int(i) % 2:
                low = images_to_tensor([self.world.render(s.scene, self.config.low_size)])
                images.append(resize_images(low, size)[0])
            else:
                images.append(images_to_tensor([self.world.render(s.scene, size)])[0])
        targets = encode_records([s.record for s in samples])
        return {"images": torch.stack(images).to(device), **{k: v.to(device) for k, v in targets.items()}}

    def loss(
        self, model: nn.Module, batch: dict[str, Any], generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        images = batch["images"]
        if self.config.noise_std > 0:
            b = images.shape[0]
            std = torch.rand(b, 1, 1, 1, generator=generator, device=images.device) * self.config.noise_std
            images = images + std * torch.randn(images.shape, generator=generator, device=images.device)
        outputs = model(images)
        return oracle_loss(outputs, batch, self.config.centre_weight)

    def evaluate(self, model: nn.Module, step: int, out_dir: Path) -> dict[str, float]:
        results = {}
        for size in (self.model_config.image_size, self.config.low_size):
            acc = evaluate_on_world(model, self.config.eval_seed, self.config.eval_n, size, two_object_prob=0.5)
            results.update({f"acc{size}_{k}": v for k, v in acc.items()})
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / f"accuracy_{step:07d}.json", json.dumps(results, indent=2) + "\n")
        return results

    def export(self, model: nn.Module, out_dir: Path) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        dtype = torch.float16 if self.config.export_dtype == "float16" else torch.float32
        state = {k: v.detach().to("cpu", dtype) for k, v in model.state_dict().items()}
        save_safetensors(state, out_dir / "model.safetensors")
        save_config(self.model_config, out_dir / "config.json")
        save_config(self.config, out_dir / "task_config.json")
