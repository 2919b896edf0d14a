"""Binary loop-closure metrics of similarity scores (scikit-learn based, JSON-serialisable results)."""

import math
from collections.abc import Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    confusion_matrix,
    f1_score,
    precision_recall_curve,
    precision_score,
    recall_score,
    roc_auc_score,
)


def _as_arrays(labels: Sequence | np.ndarray, scores: Sequence | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validated 1-D int labels (0/1) and float64 scores of the same length."""
    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=np.float64)
    if labels.ndim != 1 or scores.ndim != 1:
        raise ValueError(f"labels and scores must be 1-D, got shapes {labels.shape} and {scores.shape}")
    if len(labels) != len(scores):
        raise ValueError(f"labels and scores differ in length: {len(labels)} and {len(scores)}")
    if len(labels) == 0:
        raise ValueError("No pairs to evaluate: labels and scores are empty")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError(f"labels must be 0 or 1, got values {sorted(set(labels.tolist()) - {0, 1})[:5]}")
    not_finite = int(np.count_nonzero(~np.isfinite(scores)))
    if not_finite:
        raise ValueError(f"{not_finite} score(s) are NaN or infinite; check the descriptors that produced them")
    return labels.astype(np.int64), scores


def _best_f1(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """(best F1, its threshold) over all thresholds; ties go to the highest threshold.

    Without positives no decision can score F1 above 0; the threshold then rejects every pair.
    """
    if not labels.any():
        return 0.0, float(np.nextafter(scores.max(), np.inf))
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    # The curve's last point (precision 1, recall 0) has no threshold.
    precision, recall = precision[:-1], recall[:-1]
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros_like(denominator), where=denominator > 0)
    best = len(f1) - 1 - int(np.argmax(f1[::-1]))
    return float(f1[best]), float(thresholds[best])


def best_f1_threshold(labels: Sequence | np.ndarray, scores: Sequence | np.ndarray) -> float:
    """The score threshold (decision: score >= threshold) with the highest F1 on these pairs."""
    return _best_f1(*_as_arrays(labels, scores))[1]


def pair_metrics(
    labels: Sequence | np.ndarray, scores: Sequence | np.ndarray, threshold: float | None = None
) -> dict[str, float | int | str | None]:
    """Ranking and decision metrics of pair similarity scores.

    Args:
        labels: 1 for same-place pairs, 0 otherwise.
        scores: similarity of each pair (higher: more likely the same place).
        threshold: decision threshold (a pair is a loop closure when score >= threshold);
            None uses the best-F1 threshold of these pairs.

    Returns:
        ``num_pairs``, ``num_positives``, ``num_negatives``, ``average_precision``, ``roc_auc``,
        ``recall_at_100_precision`` (highest recall at precision 1.0; 0.0 if none), ``best_f1``,
        ``best_f1_threshold``, ``threshold`` (the one used), ``accuracy``, ``precision``,
        ``recall``, ``f1``, ``tp``, ``fp``, ``tn``, ``fn`` and ``note``. With a single class
        ``roc_auc`` is None (and without positives also ``average_precision`` and
        ``recall_at_100_precision``), and ``note`` says why; otherwise ``note`` is None.
    """
    labels, scores = _as_arrays(labels, scores)
    num_positives = int(labels.sum())
    num_negatives = len(labels) - num_positives
    note = None
    roc_auc = average_precision = recall_at_100_precision = None
    if num_positives and num_negatives:
        roc_auc = float(roc_auc_score(labels, scores))
    else:
        present = "positive" if num_positives else "negative"
        note = f"all {len(labels)} pairs are {present}: ROC AUC is undefined"
    if num_positives:
        average_precision = float(average_precision_score(labels, scores))
        precision, recall, _ = precision_recall_curve(labels, scores)
        recall_at_100_precision = float(recall[precision == 1.0].max(initial=0.0))
    else:
        note += "; average precision and recall are undefined without positives"
    best_f1, best_threshold = _best_f1(labels, scores)
    used = best_threshold if threshold is None else float(threshold)
    if not math.isfinite(used):
        raise ValueError(f"threshold must be a finite number, got {threshold}")
    decisions = (scores >= used).astype(np.int64)
    tn, fp, fn, tp = (int(count) for count in confusion_matrix(labels, decisions, labels=[0, 1]).ravel())
    return {
        "num_pairs": len(labels),
        "num_positives": num_positives,
        "num_negatives": num_negatives,
        "average_precision": average_precision,
        "roc_auc": roc_auc,
        "recall_at_100_precision": recall_at_100_precision,
        "best_f1": best_f1,
        "best_f1_threshold": best_threshold,
        "threshold": used,
        "accuracy": float(accuracy_score(labels, decisions)),
        "precision": float(precision_score(labels, decisions, zero_division=0.0)),
        "recall": float(recall_score(labels, decisions, zero_division=0.0)),
        "f1": float(f1_score(labels, decisions, zero_division=0.0)),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "note": note,
    }
