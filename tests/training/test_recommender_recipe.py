"""The recommender's training recipe: the sampled softmax, the plain SASRec head, and old checkpoints."""

import math

import pytest
import torch

from tests.training.test_recommender import planted_config, planted_sequences
from training.recommender.config import RecommenderConfig, reproduce_command
from training.recommender.evaluate import evaluate
from training.recommender.model import build, load
from training.recommender.train import next_item_loss, train


@pytest.mark.parametrize("negatives_per, tied", [("batch", True), ("position", False)])
def test_sampled_softmax_with_the_sasrec_head_learns_the_planted_pattern(tmp_path, negatives_per, tied):
    config = planted_config(
        tmp_path, heads=1, head="none", loss="sampled", negatives=8, negatives_per=negatives_per, tied=tied
    )
    model, state = load(train(config, planted_sequences(), log=lambda m: None))
    assert isinstance(model.head, torch.nn.Identity) and (model.answers is None) == tied
    assert evaluate(model, planted_sequences(), "test")["hr@5"] > 0.9
    command = reproduce_command(state["config"])
    assert (
        f"--loss sampled --seed 0{'' if tied else ' --untied'} --negatives 8 --negatives-per {negatives_per}" in command
    )


def test_sampled_softmax_never_counts_the_target_as_its_own_negative():
    config = RecommenderConfig(data="", out="", dim=4, loss="sampled", negatives=64)
    model = build(config, num_items=2)
    with torch.no_grad():
        model.items.weight.copy_(torch.tensor([[0.0] * 4, [1.0, 0, 0, 0], [0, 1.0, 0, 0]]))
    user = torch.tensor([[2.0, 0, 0, 0]])
    # 64 draws from items {1, 2}: those of item 1 (the target) are masked, the rest score 0 against 2.
    generator = torch.Generator().manual_seed(0)
    draws = torch.randint(1, 3, (64,), generator=torch.Generator().manual_seed(0))
    others = int((draws == 2).sum())
    expected = -math.log(math.exp(2.0) / (math.exp(2.0) + others))
    loss = next_item_loss(model, user, torch.tensor([1]), config, generator)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_a_checkpoint_from_before_the_recipe_settings_loads_as_it_was_trained(tmp_path):
    old = RecommenderConfig(data="d", out="o", dim=16, blocks=2, heads=2, head="mlp", loss="ce")  # then the defaults
    model = build(old, num_items=10)
    config = {k: v for k, v in vars(old).items() if k not in ("head", "loss", "negatives", "blocks", "heads")}
    torch.save({"model": model.state_dict(), "config": config, "num_items": 10}, tmp_path / "old.pt")
    loaded, state = load(tmp_path / "old.pt")
    assert isinstance(loaded.head, torch.nn.Sequential) and len(loaded.blocks) == 2
    assert "--head mlp --loss ce" in reproduce_command(state["config"])
