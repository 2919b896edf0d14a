import json
import warnings

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from dinov2_vpr.verification.metrics import best_f1_threshold, pair_metrics


def _random_pairs(seed: int, count: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """Labels and noisy scores, rounded so that many scores tie."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=count)
    scores = np.round(rng.normal(labels * 1.0, 1.0), 1)
    return labels, scores


def _brute_force_decisions(labels: np.ndarray, scores: np.ndarray) -> list[tuple[float, float, float, float]]:
    """(threshold, precision, recall, f1) for every distinct score used as threshold (score >= t)."""
    rows = []
    for threshold in np.unique(scores):
        decided = scores >= threshold
        tp = np.sum(decided & (labels == 1))
        precision = tp / decided.sum()
        recall = tp / labels.sum()
        f1 = 0.0 if tp == 0 else 2 * precision * recall / (precision + recall)
        rows.append((float(threshold), float(precision), float(recall), float(f1)))
    return rows


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ranking_metrics_agree_with_sklearn_and_brute_force(seed):
    labels, scores = _random_pairs(seed)
    metrics = pair_metrics(labels, scores)
    assert metrics["average_precision"] == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    assert metrics["roc_auc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)

    rows = _brute_force_decisions(labels, scores)
    assert metrics["recall_at_100_precision"] == pytest.approx(
        max([recall for _, precision, recall, _ in rows if precision == 1.0], default=0.0)
    )
    best_f1 = max(f1 for *_, f1 in rows)
    assert metrics["best_f1"] == pytest.approx(best_f1)
    assert metrics["best_f1_threshold"] == max(t for t, *_, f1 in rows if np.isclose(f1, best_f1))
    assert best_f1_threshold(labels, scores) == metrics["best_f1_threshold"]

    precision, recall, _ = precision_recall_curve(labels, scores)
    assert metrics["recall_at_100_precision"] == pytest.approx(recall[precision == 1.0].max())


def test_decision_metrics_at_the_threshold():
    labels, scores = _random_pairs(5)
    metrics = pair_metrics(labels, scores, threshold=0.5)
    decided = scores >= 0.5
    tp, fp = int(np.sum(decided & (labels == 1))), int(np.sum(decided & (labels == 0)))
    fn, tn = int(np.sum(~decided & (labels == 1))), int(np.sum(~decided & (labels == 0)))
    assert (metrics["tp"], metrics["fp"], metrics["tn"], metrics["fn"]) == (tp, fp, tn, fn)
    assert metrics["threshold"] == 0.5
    assert metrics["accuracy"] == pytest.approx((tp + tn) / len(labels))
    assert metrics["precision"] == pytest.approx(tp / (tp + fp))
    assert metrics["recall"] == pytest.approx(tp / (tp + fn))
    assert metrics["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert (metrics["num_pairs"], metrics["num_positives"], metrics["num_negatives"]) == (
        len(labels),
        int(labels.sum()),
        int(len(labels) - labels.sum()),
    )


def test_hand_checked_small_case():
    labels = [1, 1, 0, 1, 0]
    scores = [0.9, 0.8, 0.7, 0.6, 0.1]
    metrics = pair_metrics(labels, scores)
    # Thresholds 0.9, 0.8, 0.7, 0.6, 0.1 give F1 1/2, 4/5, 2/3, 6/7, 3/4; precision is 1 down to 0.8.
    assert metrics["recall_at_100_precision"] == pytest.approx(2 / 3)
    assert metrics["best_f1"] == pytest.approx(6 / 7)
    assert metrics["best_f1_threshold"] == 0.6
    assert metrics["threshold"] == 0.6
    assert (metrics["tp"], metrics["fp"], metrics["tn"], metrics["fn"]) == (3, 1, 1, 0)
    assert metrics["accuracy"] == pytest.approx(0.8)
    assert metrics["note"] is None

    at = pair_metrics(labels, scores, threshold=0.75)
    assert (at["tp"], at["fp"], at["tn"], at["fn"]) == (2, 0, 2, 1)
    assert at["precision"] == 1.0 and at["recall"] == pytest.approx(2 / 3)
    assert at["best_f1_threshold"] == 0.6  # reported beside the threshold used


def test_recall_at_100_precision_is_zero_when_top_score_is_negative():
    assert pair_metrics([0, 1, 1], [0.9, 0.5, 0.4])["recall_at_100_precision"] == 0.0


def test_best_f1_ties_go_to_the_highest_threshold():
    # Thresholds 0.9 (tp 1, fp 0, fn 1) and 0.6 (tp 2, fp 2, fn 0) both give the best F1, 2/3.
    assert best_f1_threshold([1, 0, 0, 1], [0.9, 0.8, 0.7, 0.6]) == 0.9


def test_results_are_plain_json_types():
    labels, scores = _random_pairs(7)
    metrics = pair_metrics(np.asarray(labels, dtype=bool), scores.astype(np.float32))
    json.dumps(metrics)
    assert all(type(value) in (int, float, str, type(None)) for value in metrics.values())
    assert all(type(metrics[key]) is int for key in ("num_pairs", "tp", "fp", "tn", "fn"))


def test_single_class_inputs_have_notes_and_no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        positives = pair_metrics([1, 1, 1], [0.2, 0.9, 0.5])
        negatives = pair_metrics([0, 0], [0.2, 0.9])
    assert positives["roc_auc"] is None and "ROC AUC is undefined" in positives["note"]
    assert positives["average_precision"] == 1.0 and positives["recall_at_100_precision"] == 1.0
    assert positives["best_f1"] == 1.0 and positives["best_f1_threshold"] == 0.2 and positives["fn"] == 0
    assert negatives["roc_auc"] is None and negatives["average_precision"] is None
    assert negatives["recall_at_100_precision"] is None and "without positives" in negatives["note"]
    assert negatives["best_f1"] == 0.0 and negatives["best_f1_threshold"] > 0.9
    assert (negatives["tn"], negatives["fp"], negatives["accuracy"]) == (2, 0, 1.0)


@pytest.mark.parametrize(
    "labels, scores, match",
    [
        ([], [], "empty"),
        ([1, 0], [0.5], "differ in length"),
        ([1, 2], [0.5, 0.1], "labels must be 0 or 1"),
        ([1, 0], [np.nan, 0.1], "NaN or infinite"),
        ([[1, 0]], [[0.5, 0.1]], "1-D"),
    ],
)
def test_bad_inputs_raise(labels, scores, match):
    with pytest.raises(ValueError, match=match):
        pair_metrics(labels, scores)


def test_non_finite_threshold_raises():
    with pytest.raises(ValueError, match="threshold"):
        pair_metrics([1, 0], [0.5, 0.1], threshold=float("nan"))
