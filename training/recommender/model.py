"""Next-item model: self-attention over the event sequence, then a multilayer perceptron.

Input per position: item embedding + learned position + channel embedding + event-type embedding.
Positions count back from the newest event (0 = newest), so a batch can be padded to its own longest
sequence instead of `max_len`: most shoppers have a handful of events, and the padding was most of the work.
Causal multi-head self-attention blocks (pre-norm) read the sequence; an MLP head turns each position's
state into a user vector, scored against every item by a dot product with the (tied) item embeddings.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from training.recommender.config import BEFORE_SETTING, RecommenderConfig
from vision.recommender import CHANNELS, EVENT_TYPES


class CausalBlock(nn.Module):
    """Pre-norm transformer block with causal multi-head self-attention (written out, so it exports to ONNX
    with dynamic batch and length; nn.TransformerEncoder's fast-path checks do not)."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout_p = heads, dropout
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ff = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, length, dim = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, length, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout_p if self.training else 0.0
        )
        x = x + self.drop(self.proj(attended.transpose(1, 2).reshape(b, length, dim)))
        return x + self.drop(self.ff(self.norm2(x)))


class SequenceRecommender(nn.Module):
    def __init__(
        self,
        num_items: int,
        dim: int = 64,
        max_len: int = 50,
        blocks: int = 2,
        heads: int = 2,
        dropout: float = 0.2,
        head: str = "mlp",
        tied: bool = True,
    ):
        super().__init__()
        self.num_items, self.dim, self.max_len = num_items, dim, max_len
        self.items = nn.Embedding(num_items + 1, dim, padding_idx=0)
        self.positions = nn.Embedding(max_len, dim)
        self.channels = nn.Embedding(len(CHANNELS), dim, padding_idx=0)
        self.types = nn.Embedding(len(EVENT_TYPES), dim, padding_idx=0)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(CausalBlock(dim, heads, dropout) for _ in range(blocks))
        self.norm = nn.LayerNorm(dim)
        if head not in ("mlp", "none"):
            raise ValueError(f"head must be 'mlp' or 'none', not {head!r}")
        self.head = (
            nn.Sequential(nn.Linear(dim, dim * 2), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim * 2, dim))
            if head == "mlp"
            else nn.Identity()
        )
        # Untied: the items a shopper has seen and the items scored as the next one get separate tables.
        self.answers = None if tied else nn.Embedding(num_items + 1, dim, padding_idx=0)
        for table in (self.items, self.answers):
            if table is not None:
                nn.init.normal_(table.weight, std=dim**-0.5)
                with torch.no_grad():
                    table.weight[0].zero_()

    def states(self, items: torch.Tensor, channels: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
        """(B, L) ids, left-padded -> (B, L, dim) user vectors after each event."""
        length = items.shape[1]
        positions = torch.arange(length - 1, -1, -1, device=items.device).unsqueeze(0)
        x = self.items(items) * self.dim**0.5 + self.positions(positions) + self.channels(channels) + self.types(types)
        # As in SASRec, padded positions are zeroed rather than masked as keys: padding is only on the left,
        # so a key mask would leave the first padded rows with nothing to attend to (NaN).
        x = self.dropout(x) * (items != 0).unsqueeze(-1)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))

    @property
    def answer_table(self) -> torch.Tensor:
        """(num_items + 1, dim): what a user vector is scored against (0 = padding)."""
        return (self.items if self.answers is None else self.answers).weight

    def user_vector(self, items, channels, types) -> torch.Tensor:
        return self.states(items, channels, types)[:, -1]

    def forward(self, items: torch.Tensor, channels: torch.Tensor, types: torch.Tensor):
        """Exported graph: the user vector after the newest event and its scores for every item (0 = padding)."""
        user = self.user_vector(items, channels, types)
        return user, user @ self.answer_table.t()


def build(config: RecommenderConfig, num_items: int) -> SequenceRecommender:
    return SequenceRecommender(
        num_items, config.dim, config.max_len, config.blocks, config.heads, config.dropout, config.head, config.tied
    )


def load(path: str | Path) -> tuple[SequenceRecommender, dict]:
    state = torch.load(path, map_location="cpu", weights_only=False)
    config = RecommenderConfig(**{**BEFORE_SETTING, **state["config"]})
    model = build(config, state["num_items"])
    model.load_state_dict(state["model"])
    return model.eval(), state
