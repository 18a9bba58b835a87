"""Train the sequence recommender (`seesku train recommender`; evaluation is training/recommender/evaluate.py).

Loss (`--loss`): a softmax cross-entropy at every real (non-padded) position of the sequence, never SASRec's
original binary cross-entropy against ONE sampled negative, which teaches the model to beat a random item,
not every item (Klenitskiy & Vasilev, "Turning Dross Into Gold Loss", RecSys 2023). The default is the
sampled softmax ("sampled": the target against 256 uniformly drawn items, drawn anew for every position, as
the eSASRec benchmark's SASRec-SS trains); "ce" ranks the target against the whole catalogue. On half of
Beauty's users the sampled one was both better (validation NDCG@10 0.0422 against 0.0398 for "ce" with the
same model) and cheaper: training/reports/recommender/ablation.md has every setting measured.

Optional contrastive regulariser (`--cl-weight`, see `contrastive_loss`): with the previous recipe (64-d,
full CE) it lifted Beauty's best validation NDCG@10 from 0.0496 to 0.0520 (weight 0.1, DuoRec's setting), for
about 1.5x the time per epoch (a second dropout pass).

A refit (`--fit-through val --epochs E`) trains the same settings through the validation item for the E epochs
that the held-out run chose: the validation item is each shopper's most recent signal, worth having in a served
model. Published rows never train on it, so a refit is not compared with them. The test item is never trained on.

Evaluation: leave-one-out. Validation scores the second-to-last item given the events before it; test
scores the last item given everything before it. The target is ranked against ALL items (no sampled
negatives); items already in the input history are excluded, as in the S3-Rec evaluation code.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from training.checkpoints import resume_state, save_atomically
from training.recommender.config import RecommenderConfig
from training.recommender.data import Sequences, left_pad
from training.recommender.evaluate import evaluate
from training.recommender.model import build


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


def contrastive_loss(
    first: torch.Tensor,
    second: torch.Tensor,
    targets: torch.Tensor,
    temperature: float,
    generator: torch.Generator,
    limit: int = 1024,
) -> torch.Tensor:
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


def next_item_loss(model, users: torch.Tensor, targets: torch.Tensor, config: RecommenderConfig, generator):
    """Cross-entropy of each position's next item: against every item ("ce"), or against the target and
    `config.negatives` uniformly drawn items, one draw per batch or per position (`negatives_per`) ("sampled";
    a negative that is the position's own target is masked, so it never counts as its own competitor)."""
    table = model.answer_table
    if config.loss == "ce":
        logits = users @ table.t()
        logits[:, 0] = float("-inf")  # never predict padding
        return F.cross_entropy(logits, targets)
    if config.loss != "sampled":
        raise ValueError(f"loss must be 'ce' or 'sampled', not {config.loss!r}")
    positive = (users * table[targets]).sum(dim=1, keepdim=True)
    if config.negatives_per == "position":
        negatives = torch.randint(1, table.shape[0], (len(targets), config.negatives), generator=generator)
        negative = torch.bmm(table[negatives], users.unsqueeze(-1)).squeeze(-1)
    else:
        negatives = torch.randint(1, table.shape[0], (1, config.negatives), generator=generator)
        negative = users @ table[negatives[0]].t()
    negative = negative.masked_fill(negatives == targets[:, None], float("-inf"))
    logits = torch.cat([positive, negative], dim=1)
    return F.cross_entropy(logits, torch.zeros_like(targets))


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


# A resumed run is the same run: the same data and model shape; it may be extended or given other threads.
RESUME_SAME = ("data", "dim", "max_len", "fit_through")
RESUME_KEEP = ("epochs", "threads", "out")


def train_epoch(
    model,
    optimizer,
    seqs: Sequences,
    batches: list[list[int]],
    config: RecommenderConfig,
    held_out: int,
    generator: torch.Generator,
    progress=None,
) -> tuple[float, int]:
    """One pass over `batches` of users: full softmax cross-entropy at every real position (plus the
    contrastive regulariser when `cl_weight`). Returns the summed loss and the steps; `progress(step, steps,
    mean loss)`."""
    total, steps = 0.0, 0
    for batch_users in batches:
        x, c, t, y = training_batch(seqs, batch_users, config.max_len, held_out)
        states = model.states(x, c, t)
        valid = y != 0
        users_now, targets = states[valid], y[valid]  # real positions only
        loss = next_item_loss(model, users_now, targets, config, generator)
        if config.cl_weight:
            second = model.states(x, c, t)[valid]  # same events, another dropout mask
            loss = loss + config.cl_weight * contrastive_loss(
                users_now, second, targets, config.cl_temperature, generator
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item()
        steps += 1
        if progress:
            progress(steps, len(batches), total / steps)
    return total, steps


def train(config: RecommenderConfig, seqs: Sequences, resume: bool = False, log=print, progress=None) -> Path:
    """Train with early stopping on validation NDCG@10; checkpoints `last.pt` every evaluation, `best.pt`."""
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    last = out / "last.pt"
    state = None
    if resume:
        state, recipe = resume_state(last, asdict(config), same=RESUME_SAME, keep=RESUME_KEEP)
        config = RecommenderConfig(**recipe)
    torch.set_num_threads(config.threads or os.cpu_count() or 1)
    torch.manual_seed(config.seed)
    model = build(config, seqs.num_items)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    start, best, stale, history = 0, -1.0, 0, []
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start, best, stale, history = state["epoch"] + 1, state["best"], state["stale"], state["history"]
    if config.fit_through not in ("train", "val"):
        raise ValueError(f"fit_through must be 'train' or 'val', not {config.fit_through!r}")
    held_out = 2 if config.fit_through == "train" else 1
    users = trainable_users(seqs, held_out)
    generator = torch.Generator().manual_seed(config.seed)
    meta = {"config": asdict(config), "num_items": seqs.num_items, "vocabulary": seqs.vocabulary}
    started = time.perf_counter() - sum(h.get("seconds", 0.0) for h in history)
    for epoch in range(start, config.epochs):
        model.train()
        batches = length_bucketed_batches(
            seqs, users, config.batch, np.random.default_rng(config.seed * 100_003 + epoch)
        )
        epoch_started = time.perf_counter()
        total, steps = train_epoch(
            model,
            optimizer,
            seqs,
            batches,
            config,
            held_out,
            generator,
            (lambda step, total, loss: progress(epoch, step, total, loss)) if progress else None,
        )
        record = {
            "epoch": epoch + 1,
            "loss": total / max(1, steps),
            "seconds": round(time.perf_counter() - epoch_started, 1),
        }
        if held_out == 1:  # the refit has no validation left: its last epoch is the model
            if epoch + 1 == config.epochs:
                save_atomically(
                    {"model": model.state_dict(), **meta, "epoch": epoch, "history": history + [record]},
                    out / "best.pt",
                )
        elif (epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs:
            val = evaluate(model, seqs, "val", exclude_history=config.exclude_history)
            record.update({f"val_{k}": v for k, v in val.items() if k != "users"})
            if record["val_ndcg@10"] > best:
                best, stale = record["val_ndcg@10"], 0
                save_atomically(
                    {"model": model.state_dict(), **meta, "epoch": epoch, "history": history + [record]},
                    out / "best.pt",
                )
            else:
                stale += 1
        history.append(record)
        log(json.dumps(record))
        checkpoint = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), **meta, "epoch": epoch}
        save_atomically({**checkpoint, "best": best, "stale": stale, "history": history}, last)
        if stale >= config.patience:
            log(f"early stop: validation NDCG@10 has not improved for {stale} evaluations")
            break
    (out / "history.json").write_text(
        json.dumps({"history": history, "wall_s": round(time.perf_counter() - started, 1)}, indent=2)
    )
    return out / "best.pt"
