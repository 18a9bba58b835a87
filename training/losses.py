"""The vision trainer's losses beyond cross-entropy (why each: training/vision.py's docstring)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def supcon_loss(embedding: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Supervised contrastive loss over a batch of L2-normalised embeddings."""
    n = len(embedding)
    self_mask = torch.eye(n, dtype=torch.bool, device=embedding.device)
    logits = (embedding @ embedding.t() / temperature).masked_fill(self_mask, float("-inf"))
    log_prob = logits.log_softmax(dim=1)
    positives = (labels[:, None] == labels[None, :]) & ~self_mask
    has_positive = positives.any(dim=1)
    if not has_positive.any():
        return embedding.sum() * 0.0
    per_anchor = -log_prob.masked_fill(~positives, 0.0).sum(dim=1) / positives.sum(dim=1).clamp(min=1)
    return per_anchor[has_positive].mean()


def consistency_loss(
    embedding: torch.Tensor, fine_logits: torch.Tensor, twin_embedding: torch.Tensor, twin_logits: torch.Tensor
) -> torch.Tensor:
    """How far each photo's answer is from its channel twin's (the same view re-delivered by a channel): KL
    divergence of the fine head's distributions plus 1 - cosine of the L2-normalised embeddings. The twin is
    the target: the caller computes it without gradient. The photo itself is channel-delivered a share
    `channel_p` of the time, so both directions are taught."""
    kl = F.kl_div(
        fine_logits.log_softmax(dim=1), twin_logits.log_softmax(dim=1), log_target=True, reduction="batchmean"
    )
    return kl + (1 - (embedding * twin_embedding).sum(dim=1)).mean()
