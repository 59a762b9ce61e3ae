"""A non-diffusion prior in the manner of ECLIPSE (Patel et al., CVPR 2024): one forward pass from the caption to z_i.

The network is the diffusion prior's (:class:`~unclip.models.prior.DiffusionPrior`, the same config and the
same parameters) run once with its step inputs fixed: timestep 0 and a zero noised-z_i token. It predicts
the normalised image embedding directly from the caption's token states and z_t, and is trained
(:class:`~unclip.train.prior_task.ProjectionPriorTask`) with ECLIPSE's objective: a projection loss (mean
squared error to the normalised z_i) plus a weighted contrastive loss between the predicted z_i and the
batch's text embeddings. Sampling is deterministic: one caption, one z_i, so every variety among images of
one caption must come from the decoder. That is what experiment 9 measures.
"""

from __future__ import annotations

import torch
from torch import Tensor

from unclip.models.prior import PRESETS, DiffusionPrior, PriorConfig
from unclip.models.text_embedding import TextEmbedding

__all__ = ["PRESETS", "ProjectionPrior"]


class ProjectionPrior(DiffusionPrior):
    """The diffusion prior's network as a one-pass caption -> z_i predictor (see the module doc)."""

    def __init__(self, config: PriorConfig):
        super().__init__(config)

    def forward(self, text_pooled: Tensor, text_tokens: Tensor, text_mask: Tensor) -> Tensor:  # type: ignore[override]
        """Predict the normalised image embedding.

        Args:
            text_pooled: [B, D] pooled CLIP text embedding z_t.
            text_tokens: [B, L, W] CLIP text token states.
            text_mask: [B, L] bool, True for real tokens.

        Returns:
            [B, D] the predicted z_i in normalised CLIP space (:meth:`denormalize` gives CLIP space).
        """
        b = text_pooled.shape[0]
        step_z = torch.zeros(b, self.config.clip_dim, device=text_pooled.device, dtype=text_pooled.dtype)
        t = torch.zeros(b, dtype=torch.long, device=text_pooled.device)
        return super().forward(step_z, t, text_pooled, text_tokens, text_mask)

    @torch.no_grad()
    def sample(self, text: TextEmbedding) -> Tensor:
        """z_i [B, D] in CLIP space (float32) for B encoded captions; no noise, no guidance."""
        dtype = self.prd_emb.dtype
        device = self.prd_emb.device
        text = text.to(device=device, dtype=dtype)
        return self.denormalize(self(text.pooled, text.tokens, text.mask.bool())).float()
