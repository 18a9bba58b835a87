"""The recommender's recipe: every setting of a run, saved in its checkpoints, and the command that
reproduces it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RecommenderConfig:
    data: str
    out: str
    # The defaults are the recipe the ablation chose on half of Beauty's users (training/reports/recommender/).
    dim: int = 256
    max_len: int = 50
    blocks: int = 1
    heads: int = 1
    dropout: float = 0.2
    # "mlp": a two-layer perceptron turns the last state into the user vector; "none": the state itself, as
    # in SASRec.
    head: str = "none"
    # "ce": full softmax cross-entropy over every item; "sampled": softmax over the target and `negatives`
    # uniformly drawn items, as in the eSASRec benchmark's SASRec-SS.
    loss: str = "sampled"
    negatives: int = 256
    # "batch": one draw shared by every position of a batch (cheap); "position": each position its own draw,
    # as RecTools' SASRec samples them (more items get a gradient per step, at the cost of a gather).
    negatives_per: str = "position"
    tied: bool = True  # the input item table scores the answers too
    epochs: int = 200
    batch: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    eval_every: int = 2
    patience: int = 4  # evaluations without a better validation NDCG@10 before stopping
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


# Checkpoints written before a setting existed were trained as these say; a newer default must not rebuild
# them another way.
BEFORE_SETTING = {"blocks": 2, "heads": 2, "head": "mlp", "loss": "ce", "negatives_per": "batch", "tied": True}


def reproduce_command(config: dict) -> str:
    """The `seesku train recommender` line that reproduces a checkpoint's config."""
    command = (
        "seesku train recommender --data {data} --out {out} --epochs {epochs} --dim {dim} --max-len {max_len} "
        "--lr {lr:g} --batch {batch} --dropout {dropout:g} --blocks {blocks} --heads {heads} --head {head} "
        "--loss {loss} --seed {seed}"
    ).format(**{**BEFORE_SETTING, **config})
    if not config.get("tied", True):
        command += " --untied"
    if config.get("loss") == "sampled":
        command += " --negatives {negatives} --negatives-per {negatives_per}".format(
            **{"negatives_per": "batch", **config}
        )
    if config.get("cl_weight"):
        command += " --cl-weight {cl_weight:g} --cl-temperature {cl_temperature:g}".format(**config)
    if config.get("fit_through", "train") != "train":
        command += f" --fit-through {config['fit_through']}"
    return command
