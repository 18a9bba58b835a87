"""Leave-one-out evaluation of the recommender, full ranking: one model, an ensemble, or checkpoints as
`seesku eval recommender` scores them (with the checks that keep refits and held-out models apart).

Validation scores the second-to-last item given the events before it; test scores the last item given
everything before it. The target is ranked against ALL items (no sampled negatives); items already in the
input history are excluded, as in the S3-Rec evaluation code, unless the model was trained without that.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from training.recommender.config import reproduce_command
from training.recommender.data import Sequences, left_pad
from training.recommender.model import SequenceRecommender, load

KS = (5, 10, 20)


def _arrays(seqs: Sequences, users: list[int], cut: int, max_len: int):
    """Inputs of the given users: their sequence without the last `cut` items, left-padded to the longest."""
    max_len = min(max_len, max(len(seqs.items[u]) - cut for u in users))
    items, channels, types = [], [], []
    for u in users:
        end = len(seqs.items[u]) - cut
        items.append(left_pad(seqs.items[u][:end], max_len))
        channels.append(left_pad(seqs.side("channels", u)[:end], max_len))
        types.append(left_pad(seqs.side("types", u)[:end], max_len))
    return torch.from_numpy(np.stack(items)), torch.from_numpy(np.stack(channels)), torch.from_numpy(np.stack(types))


@torch.no_grad()
def evaluate(
    model: SequenceRecommender, seqs: Sequences, split: str, batch: int = 1024, exclude_history: bool = True
) -> dict[str, float]:
    """HR@K and NDCG@K for K in 5, 10, 20, full ranking, on the `val` or `test` target of every user."""
    model.eval()
    cut = {"val": 2, "test": 1}[split]
    users = [u for u in range(len(seqs)) if len(seqs.items[u]) >= cut + 1]
    hits = {k: 0.0 for k in KS}
    ndcg = {k: 0.0 for k in KS}
    for start in range(0, len(users), batch):
        chunk = users[start : start + batch]
        items, channels, types = _arrays(seqs, chunk, cut, model.max_len)
        _, scores = model(items, channels, types)
        targets = torch.tensor([seqs.items[u][len(seqs.items[u]) - cut] for u in chunk])
        target_scores = scores.gather(1, targets[:, None])
        history = torch.zeros_like(scores, dtype=torch.bool)
        for row, u in enumerate(chunk if exclude_history else []):
            history[row, torch.from_numpy(seqs.items[u][: len(seqs.items[u]) - cut])] = True
        history[:, 0] = True  # padding is never an answer
        history[torch.arange(len(chunk)), targets] = False
        scores = scores.masked_fill(history, float("-inf"))
        rank = (scores > target_scores).sum(dim=1)  # 0 = first
        for k in KS:
            hit = rank < k
            hits[k] += hit.sum().item()
            ndcg[k] += (hit.float() / torch.log2(rank.float() + 2)).sum().item()
    n = len(users)
    out = {f"hr@{k}": hits[k] / n for k in KS}
    out.update({f"ndcg@{k}": ndcg[k] / n for k in KS})
    out["users"] = float(n)
    return out


class Ensemble(torch.nn.Module):
    """Several recommenders of one architecture on one item vocabulary (other seeds, other regulariser
    weights), scored as the mean of their log-probabilities.

    Members that differ err on different shoppers; averaging log-softmax (not raw dot products, whose scale
    differs per member) is the usual way to combine full-softmax models.
    """

    def __init__(self, members: list[SequenceRecommender]):
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        if len({m.num_items for m in members}) != 1 or len({m.max_len for m in members}) != 1:
            raise ValueError("ensemble members must share the item vocabulary and the history length")
        self.members = torch.nn.ModuleList(members)
        self.num_items, self.max_len = members[0].num_items, members[0].max_len

    def forward(self, items: torch.Tensor, channels: torch.Tensor, types: torch.Tensor):
        scores = [F.log_softmax(member(items, channels, types)[1][:, 1:], dim=1) for member in self.members]
        mean = torch.stack(scores).mean(dim=0)
        return None, F.pad(mean, (1, 0), value=float("-inf"))  # column 0 is padding, never an answer


class EvaluationRefused(ValueError):
    """Checkpoints that cannot be scored together, or not on that split."""


def evaluate_checkpoints(paths: list[Path], seqs: Sequences, split: str, data: str = "") -> dict:
    """Score one checkpoint, or several as an ensemble, on `split`; the result names each member, its best
    epoch, training time and reproduce command. EvaluationRefused for a mix of refits and held-out models,
    members that disagree on excluding the history, or a refit scored on the item it was trained through."""
    loaded = [load(path) for path in paths]
    configs = [state["config"] for _, state in loaded]
    refits = {config.get("fit_through") == "val" for config in configs}
    if len(refits) > 1:
        raise EvaluationRefused("an ensemble mixes refits with held-out models; give it models trained alike")
    refit = refits.pop()
    if split == "val" and refit:
        raise EvaluationRefused(f"{paths[0]} is a refit trained through the validation item; evaluate it on test")
    excludes = {config.get("exclude_history", True) for config in configs}
    if len(excludes) > 1:
        raise EvaluationRefused("ensemble members disagree on excluding the history from the answers")
    exclude = excludes.pop()
    try:
        recommender = loaded[0][0] if len(loaded) == 1 else Ensemble([m for m, _ in loaded])
    except ValueError as error:
        raise EvaluationRefused(str(error)) from error
    started = time.perf_counter()
    metrics = evaluate(recommender, seqs, split, exclude_history=exclude)
    members = [_describe(path, state) for path, (_, state) in zip(paths, loaded)]
    result = {
        "data": data,
        "split": split,
        **members[0],
        "metrics": metrics,
        "eval_s": round(time.perf_counter() - started, 1),
    }
    if len(members) > 1:
        result.update(
            model=[m["model"] for m in members],
            ensemble=members,
            best_epoch=[m["best_epoch"] for m in members],
            train_wall_s=sum(m["train_wall_s"] or 0.0 for m in members),
            train_command=[m["train_command"] for m in members],
        )
    result["protocol"] = (
        "leave-one-out; target ranked against all items"
        + ("; items already in the history excluded" if exclude else "")
        + ("; refit: trained through the validation item" if refit else "")
        + (f"; ensemble of {len(members)}: mean log-softmax" if len(members) > 1 else "")
    )
    return result


def _describe(path: Path, state: dict) -> dict:
    history_file = path.parent / "history.json"
    return {
        "model": str(path),
        "best_epoch": state["epoch"] + 1,
        "train_wall_s": json.loads(history_file.read_text())["wall_s"] if history_file.exists() else None,
        "train_command": reproduce_command(state["config"]),
    }
