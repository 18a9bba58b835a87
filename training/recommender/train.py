"""Train and evaluate the sequence recommender (`seesku train recommender`, `seesku eval recommender`).

Loss: full softmax cross-entropy over every item at every position of the sequence. Why: SASRec's
original loss scores the target against ONE sampled negative with a binary cross-entropy, which teaches the
model to beat a random item, not every item; full cross-entropy ranks the target against the whole
catalogue, which is exactly what the full-ranking evaluation (and the service) asks. It is known to beat
BCE by a wide margin on these data sets (Klenitskiy & Vasilev, "Turning Dross Into Gold Loss: is BERT4Rec
really better than SASRec?", RecSys 2023). It is affordable here because the logits are only computed at
real (non-padded) positions: Beauty's sequences average nine events, so a batch of 256 users needs about
2,000 x 12,102 logits, not 256 x 50 x 12,102.

Optional contrastive regulariser (`--cl-weight`, see `contrastive_loss`): on Beauty it lifted the best
validation NDCG@10 from 0.0496 to 0.0520 (weight 0.1, DuoRec's setting), for about 1.5x the time per epoch (a second dropout pass).

The reported Beauty model is a refit (`--fit-through val --epochs E`): the same settings trained through the
validation item for the E epochs that the held-out run chose. Why: the validation item is each shopper's most
recent training signal; holding it out forever costs the newest tastes. The test item is never trained on.

Evaluation: leave-one-out. Validation scores the second-to-last item given the events before it; test
scores the last item given everything before it. The target is ranked against ALL items (no sampled
negatives); items already in the input history are excluded, as in the S3-Rec evaluation code.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from training.checkpoints import save_atomically
from training.recommender.data import Sequences, left_pad
from training.recommender.model import SequenceRecommender

KS = (5, 10, 20)


@dataclass
class RecommenderConfig:
    data: str
    out: str
    dim: int = 64
    max_len: int = 50
    blocks: int = 2
    heads: int = 2
    dropout: float = 0.3
    epochs: int = 200
    batch: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    eval_every: int = 2
    patience: int = 6  # evaluations without a better validation NDCG@10 before stopping
    seed: int = 0
    threads: int = 0
    from_events: bool = False
    # The Beauty protocol (S3-Rec's code) excludes items already in the history from the ranking. Shoppers'
    # events are different: buying the same oat milk again is the most likely next event, so not for events.
    exclude_history: bool = True
    # Contrastive regulariser (0 = off): see `contrastive_loss`.
    cl_weight: float = 0.0
    cl_temperature: float = 1.0
    # "train": the validation item is held out and picks the best epoch. "val": a refit for the final model,
    # trained through the validation item for a fixed number of epochs (chosen beforehand on a "train" run);
    # the test item is never trained on either way.
    fit_through: str = "train"


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


def training_batch(seqs: Sequences, users: list[int], max_len: int, held_out: int = 2):
    """Next-item pairs over each user's training part (all but the last `held_out` items), padded to the longest."""
    max_len = min(max_len, max(len(seqs.items[u]) - held_out - 1 for u in users))
    xs, cs, ts, ys = [], [], [], []
    for u in users:
        train = seqs.items[u][:-held_out]
        if len(train) < 2:
            continue
        xs.append(left_pad(train[:-1], max_len))
        cs.append(left_pad(seqs.side("channels", u)[: len(train) - 1], max_len))
        ts.append(left_pad(seqs.side("types", u)[: len(train) - 1], max_len))
        ys.append(left_pad(train[1:], max_len))
    return tuple(torch.from_numpy(np.stack(a)) for a in (xs, cs, ts, ys))


def contrastive_loss(first: torch.Tensor, second: torch.Tensor, targets: torch.Tensor, temperature: float,
                     generator: torch.Generator, limit: int = 1024) -> torch.Tensor:
    """DuoRec's contrastive regulariser (Qiu et al., WSDM 2022), per position instead of per sequence.

    Why: with a tied item table, cross-entropy alone lets the user vectors (and so the item embeddings)
    collapse into a narrow cone, where many items score alike; pulling each position's vector towards a view
    of the same intent and away from the rest of the batch spreads them out. The positive of a position is a
    position of another shopper with the same next item when the batch has one (DuoRec's supervised view),
    else the same position under a second dropout mask (its unsupervised view). Positions with the same next
    item are not used as each other's negatives.
    """
    n = first.shape[0]
    if n > limit:
        keep = torch.randperm(n, generator=generator)[:limit]
        first, second, targets, n = first[keep], second[keep], targets[keep], limit
    same = targets[:, None] == targets[None, :]
    others = same & ~torch.eye(n, dtype=torch.bool)
    noise = torch.rand(n, n, generator=generator).masked_fill(~others, -1.0)
    partner = torch.where(others.any(dim=1), noise.argmax(dim=1), torch.arange(n))
    z = torch.cat([first, second[partner]])
    sim = z @ z.t() / temperature
    positive = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    blocked = same.repeat(2, 2)  # a partner has its position's next item, so both halves share `targets`
    blocked[torch.arange(2 * n), positive] = False
    return F.cross_entropy(sim.masked_fill(blocked, float("-inf")), positive)


def length_bucketed_batches(seqs: Sequences, users: list[int], batch: int, rng: np.random.Generator) -> list[list[int]]:
    """Shuffled batches of users with similar sequence lengths, so little of each batch is padding."""
    order = list(rng.permutation(users))
    window = batch * 32
    batches = []
    for i in range(0, len(order), window):
        chunk = sorted(order[i : i + window], key=lambda u: len(seqs.items[u]))
        batches += [chunk[j : j + batch] for j in range(0, len(chunk), batch)]
    return [batches[i] for i in rng.permutation(len(batches))]


def trainable_users(seqs: Sequences, held_out: int = 2) -> list[int]:
    return [u for u in range(len(seqs)) if len(seqs.items[u]) >= held_out + 2]


@torch.no_grad()
def evaluate(model: SequenceRecommender, seqs: Sequences, split: str, batch: int = 1024,
             exclude_history: bool = True) -> dict[str, float]:
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


def build(config: RecommenderConfig, num_items: int) -> SequenceRecommender:
    return SequenceRecommender(num_items, config.dim, config.max_len, config.blocks, config.heads, config.dropout)


def train(config: RecommenderConfig, seqs: Sequences, resume: bool = False, log=print, progress=None) -> Path:
    """Train with early stopping on validation NDCG@10; checkpoints `last.pt` every evaluation, `best.pt`."""
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(config.threads or os.cpu_count() or 1)
    torch.manual_seed(config.seed)
    model = build(config, seqs.num_items)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    start, best, stale, history = 0, -1.0, 0, []
    last = out / "last.pt"
    if resume:
        if not last.exists():
            raise FileNotFoundError(f"--resume: no checkpoint at {last}")
        state = torch.load(last, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start, best, stale, history = state["epoch"] + 1, state["best"], state["stale"], state["history"]
    if config.fit_through not in ("train", "val"):
        raise ValueError(f"fit_through must be 'train' or 'val', not {config.fit_through!r}")
    held_out = 2 if config.fit_through == "train" else 1
    users = trainable_users(seqs, held_out)
    cl_generator = torch.Generator().manual_seed(config.seed)
    meta = {"config": asdict(config), "num_items": seqs.num_items, "vocabulary": seqs.vocabulary}
    started = time.perf_counter() - sum(h.get("seconds", 0.0) for h in history)
    for epoch in range(start, config.epochs):
        model.train()
        batches = length_bucketed_batches(seqs, users, config.batch, np.random.default_rng(config.seed * 100_003 + epoch))
        total, steps, epoch_started = 0.0, 0, time.perf_counter()
        steps_total = len(batches)
        for batch_users in batches:
            x, c, t, y = training_batch(seqs, batch_users, config.max_len, held_out)
            states = model.states(x, c, t)
            valid = y != 0
            users_now, targets = states[valid], y[valid]  # real positions only
            logits = users_now @ model.items.weight.t()
            logits[:, 0] = float("-inf")  # never predict padding
            loss = F.cross_entropy(logits, targets)
            if config.cl_weight:
                second = model.states(x, c, t)[valid]  # same events, another dropout mask
                loss = loss + config.cl_weight * contrastive_loss(users_now, second, targets, config.cl_temperature, cl_generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item()
            steps += 1
            if progress:
                progress(epoch, steps, steps_total, total / steps)
        record = {"epoch": epoch + 1, "loss": total / max(1, steps), "seconds": round(time.perf_counter() - epoch_started, 1)}
        if held_out == 1:  # the refit has no validation left: its last epoch is the model
            if epoch + 1 == config.epochs:
                save_atomically({"model": model.state_dict(), **meta, "epoch": epoch, "history": history + [record]}, out / "best.pt")
        elif (epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs:
            val = evaluate(model, seqs, "val", exclude_history=config.exclude_history)
            record.update({f"val_{k}": v for k, v in val.items() if k != "users"})
            if record["val_ndcg@10"] > best:
                best, stale = record["val_ndcg@10"], 0
                save_atomically({"model": model.state_dict(), **meta, "epoch": epoch, "history": history + [record]}, out / "best.pt")
            else:
                stale += 1
        history.append(record)
        log(json.dumps(record))
        save_atomically({"model": model.state_dict(), "optimizer": optimizer.state_dict(), **meta, "epoch": epoch,
                      "best": best, "stale": stale, "history": history}, last)
        if stale >= config.patience:
            log(f"early stop: validation NDCG@10 has not improved for {stale} evaluations")
            break
    (out / "history.json").write_text(json.dumps({"history": history, "wall_s": round(time.perf_counter() - started, 1)}, indent=2))
    return out / "best.pt"


def load(path: str | Path) -> tuple[SequenceRecommender, dict]:
    state = torch.load(path, map_location="cpu", weights_only=False)
    config = RecommenderConfig(**state["config"])
    model = build(config, state["num_items"])
    model.load_state_dict(state["model"])
    return model.eval(), state
