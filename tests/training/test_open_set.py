"""The open-set figures: AUROC, the error rates at a threshold and at the issue's two operating points."""

import numpy as np
import pytest

from training.open_set import auroc, calibrate, figures, non_product_photos


def rows(positives, negatives, wrong=()):
    return (
        [("in", True, c) for c in positives]
        + [("in", False, c) for c in wrong]
        + [("removed", False, c) for c in negatives[: len(negatives) // 2]]
        + [("non_product:stripes", False, c) for c in negatives[len(negatives) // 2 :]]
    )


def test_auroc_counts_ties_half():
    assert auroc(np.array([0.9, 0.8]), np.array([0.1, 0.2])) == 1.0
    assert auroc(np.array([0.5]), np.array([0.5])) == 0.5
    assert auroc(np.array([0.1]), np.array([0.9])) == 0.0


def test_error_rates_at_the_threshold_and_the_operating_points():
    positives = np.linspace(0.6, 1.0, 100)
    negatives = np.linspace(0.0, 0.7, 100)
    result = figures(rows(positives, negatives, wrong=[0.3, 0.9]), threshold=0.65)
    assert result["correct_in_catalogue_unmatched"] == pytest.approx(np.mean(positives < 0.65))
    assert result["out_of_catalogue_unmatched"] == pytest.approx(np.mean(negatives < 0.65))
    assert result["wrong_in_catalogue_unmatched"] == 0.5
    assert set(result["unmatched_by_kind"]) == {"removed", "non_product"}
    points = result["operating_points"]
    at_90 = points["90pct_out_of_catalogue_unmatched"]
    assert at_90["threshold"] == pytest.approx(np.percentile(negatives, 90))
    assert at_90["correct_in_catalogue_unmatched"] == pytest.approx(np.mean(positives < at_90["threshold"]))
    at_5 = points["5pct_correct_unmatched"]
    assert np.mean(positives < at_5["threshold"]) <= 0.05 + 1e-9
    assert calibrate(rows(positives, negatives)) == pytest.approx(np.percentile(negatives, 97.5))


def test_generated_non_products_are_seeded():
    first, again, other = non_product_photos(8, seed=1), non_product_photos(8, seed=1), non_product_photos(8, seed=2)
    assert first == again and first != other and len({kind for kind, _ in first}) == 8


def test_a_given_threshold_is_for_val_only():
    from training.open_set import evaluate_open_set
    from vision.match_rule import MatchRule

    # Other splits measure the model's stored rule: setting one there would tune on them.
    with pytest.raises(ValueError, match="val only"):
        evaluate_open_set(None, "test", None, MatchRule(), threshold=0.7)
