"""The `matched` rule and the calibration stored with each shipped model."""

import json

import pytest

from api.settings import REPO_ROOT
from vision.manifest import ModelManifest
from vision.match_rule import DEFAULT_THRESHOLD, RULE_FILE, MatchRule, match_confidence

MODELS = REPO_ROOT / "triton_models"


def test_confidence_is_the_mean_of_visual_and_category_evidence():
    assert match_confidence(0.9, 0.7) == pytest.approx(0.8)
    assert match_confidence(0.6, 0.95) == 0.6  # a sure category cannot vouch for a photo unlike the product's
    assert match_confidence(0.9, None) == 0.9  # a category the heads do not know: the visual score alone


def test_judge_against_the_threshold_and_without_a_top_product():
    rule = MatchRule(threshold=0.8)
    assert rule.judge(0.9, 0.8) == (True, pytest.approx(0.85))
    assert rule.judge(0.7, 0.99) == (False, pytest.approx(0.7))
    assert rule.judge(0.9, 0.1) == (False, pytest.approx(0.5))  # looks alike; the heads name another category
    assert rule.judge(None, None) == (False, 0.0)


def test_a_model_folder_without_a_rule_gets_the_uncalibrated_default(tmp_path):
    rule = MatchRule.load(tmp_path)
    assert rule.threshold == DEFAULT_THRESHOLD and rule.calibrated_on is None
    saved = MatchRule(0.75, "data:val", "m:1", "seesku eval open-set", {"auroc": 0.99})
    saved.save(tmp_path)
    assert MatchRule.load(tmp_path) == saved and json.loads((tmp_path / RULE_FILE).read_text())["threshold"] == 0.75


def test_each_shipped_model_has_a_rule_calibrated_on_val_for_it():
    for folder in ("product_embedder", "product_embedder_int8"):
        rule = MatchRule.load(MODELS / folder)
        assert rule.calibrated_on == "grocery_store:val" and rule.model == ModelManifest.load(MODELS / folder).served_id
        assert rule.command.startswith("seesku eval open-set") and rule.val["split"] == "val"
        assert rule.val["out_of_catalogue_unmatched"] >= 0.9 and rule.val["correct_in_catalogue_unmatched"] <= 0.05
