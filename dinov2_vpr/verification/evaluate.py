"""Loop-closure evaluation of pair lists: scores, decisions, metrics and pictures, per list.

``evaluate_pair_list(pairs, scores, threshold, output_dir)`` is pure given the similarity scores;
``describe_rows`` turns head inputs into descriptors.
"""

import csv
import io
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from dinov2_vpr.data.image_table import PairIndex
from dinov2_vpr.data.pairs import Pair, write_result_file
from dinov2_vpr.io import atomic_write_text
from dinov2_vpr.verification.metrics import pair_metrics
from dinov2_vpr.verification.plots import pr_curve_figure, save_figure, similarity_histogram_figure

logger = logging.getLogger("dinov2")

TABLE_COLUMNS = (
    ("list", "name", "{}"),
    ("pairs", "num_pairs", "{}"),
    ("AP", "average_precision", "{:.4f}"),
    ("ROC AUC", "roc_auc", "{:.4f}"),
    ("R@100P", "recall_at_100_precision", "{:.4f}"),
    ("best F1", "best_f1", "{:.4f}"),
    ("threshold", "threshold", "{:.4f}"),
    ("accuracy", "accuracy", "{:.4f}"),
)


def describe_rows(head: nn.Module, inputs: Tensor, batch_size: int = 4096) -> Tensor:
    """Descriptors ``(N, D)`` of head inputs ``(N, D_in)``, in eval mode without gradients."""
    head.eval()
    with torch.no_grad():
        return torch.cat([head(inputs[i : i + batch_size]) for i in range(0, len(inputs), batch_size)])


def cosine_scores(descriptors: Tensor, index: PairIndex) -> np.ndarray:
    """Cosine similarity of each pair of unit-length descriptors."""
    return (descriptors[index.query] * descriptors[index.reference]).sum(dim=-1).numpy().astype(np.float64)


def _scores_csv(pairs: Sequence[Pair], scores: np.ndarray) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["query", "reference", "label", "similarity"])
    for pair, score in zip(pairs, scores):
        writer.writerow([pair.query, pair.reference, "" if pair.label is None else pair.label, f"{score:.6f}"])
    return buffer.getvalue()


def evaluate_pair_list(
    name: str, pairs: Sequence[Pair], scores: np.ndarray, threshold: float, output_dir: str | Path
) -> dict:
    """Write ``<name>_result.txt`` (one 1/0 a line, input order) and ``<name>_scores.csv``; for labelled
    lists also ``<name>_pr_curve.png`` and ``<name>_similarity_histogram.png``. Returns the metrics.
    """
    output_dir = Path(output_dir)
    decisions = (scores >= threshold).astype(int)
    write_result_file(output_dir / f"{name}_result.txt", decisions.tolist())
    atomic_write_text(output_dir / f"{name}_scores.csv", _scores_csv(pairs, scores))
    labelled = all(pair.label is not None for pair in pairs)
    result = {
        "name": name,
        "labelled": labelled,
        "num_pairs": len(pairs),
        "threshold": threshold,
        "num_predicted_loops": int(decisions.sum()),
    }
    if labelled:
        labels = np.array([pair.label for pair in pairs])
        result.update(pair_metrics(labels, scores, threshold))
        save_figure(pr_curve_figure(labels, scores, name), output_dir / f"{name}_pr_curve.png")
        save_figure(
            similarity_histogram_figure(labels, scores, threshold, name),
            output_dir / f"{name}_similarity_histogram.png",
        )
    return result


def format_table(results: Sequence[dict]) -> str:
    """A plain-text table of the per-list results (``-`` where a metric does not apply)."""
    rows = [[title for title, _, _ in TABLE_COLUMNS]]
    for result in results:
        row = []
        for _, key, fmt in TABLE_COLUMNS:
            value = result.get(key)
            row.append("-" if value is None else fmt.format(value))
        rows.append(row)
    widths = [max(len(row[column]) for row in rows) for column in range(len(TABLE_COLUMNS))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)
