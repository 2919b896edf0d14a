"""Figures of pair scores: precision-recall curve and similarity histogram.

Figures are built on matplotlib's Agg canvas directly (no pyplot, no global backend switch), so
they render headless without warnings and are not kept alive by a pyplot figure registry.
"""

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import precision_recall_curve

from dinov2_vpr.io import atomic_write
from dinov2_vpr.verification.metrics import pair_metrics


def _new_figure() -> tuple[Figure, Axes]:
    figure = Figure(figsize=(6.0, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def _format(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def pr_curve_figure(labels: Sequence | np.ndarray, scores: Sequence | np.ndarray, title: str) -> Figure:
    """Precision-recall curve with average precision, recall at 100% precision and the best-F1 point.

    Raises:
        ValueError: there are no positive pairs (the curve is undefined), or the inputs are invalid.
    """
    metrics = pair_metrics(labels, scores)
    if not metrics["num_positives"]:
        raise ValueError(f"Cannot draw a precision-recall curve for {title!r}: no positive pairs")
    precision, recall, _ = precision_recall_curve(np.asarray(labels), np.asarray(scores, dtype=np.float64))
    figure, axes = _new_figure()
    axes.step(
        recall,
        precision,
        where="post",
        label=(f"AP = {_format(metrics['average_precision'])}, R@100P = {_format(metrics['recall_at_100_precision'])}"),
    )
    axes.plot(
        metrics["recall"],
        metrics["precision"],
        "o",
        label=f"best F1 = {metrics['best_f1']:.3f} at {metrics['threshold']:.3f}",
    )
    axes.set(xlabel="Recall", ylabel="Precision", xlim=(0.0, 1.02), ylim=(0.0, 1.02), title=title)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower left")
    return figure


def similarity_histogram_figure(
    labels: Sequence | np.ndarray, scores: Sequence | np.ndarray, threshold: float | None, title: str
) -> Figure:
    """Histograms of the scores of positive and negative pairs, with the decision threshold (if given)."""
    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=np.float64)
    pair_metrics(labels, scores)  # validates the inputs with clear errors
    edges = np.histogram_bin_edges(scores, bins=min(50, max(10, len(scores) // 10)))
    figure, axes = _new_figure()
    for value, name, colour in ((1, "positives", "tab:green"), (0, "negatives", "tab:red")):
        selected = scores[labels == value]
        axes.hist(selected, bins=edges, alpha=0.5, color=colour, label=f"{name} (n={len(selected)})")
    if threshold is not None:
        axes.axvline(threshold, color="black", linestyle="--", label=f"threshold = {threshold:.3f}")
    axes.set(xlabel="Similarity", ylabel="Pairs", title=title)
    axes.legend()
    return figure


def save_figure(figure: Figure, path: str | Path) -> None:
    """Write ``figure`` as a PNG atomically, then close it."""
    with atomic_write(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=100)
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:  # a figure made with pyplot stays registered there until closed
        pyplot.close(figure)
    figure.clear()
