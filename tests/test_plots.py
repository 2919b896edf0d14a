import numpy as np
import pytest
from PIL import Image

from dinov2_vpr.verification.metrics import pair_metrics
from dinov2_vpr.verification.plots import pr_curve_figure, save_figure, similarity_histogram_figure


def _pairs() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, size=200)
    return labels, rng.normal(labels, 1.0)


def test_pr_curve_figure_legend_and_png(tmp_path):
    labels, scores = _pairs()
    metrics = pair_metrics(labels, scores)
    figure = pr_curve_figure(labels, scores, "test pairs")
    axes = figure.axes[0]
    legend = [text.get_text() for text in axes.get_legend().get_texts()]
    assert f"AP = {metrics['average_precision']:.3f}" in legend[0]
    assert f"R@100P = {metrics['recall_at_100_precision']:.3f}" in legend[0]
    assert axes.get_title() == "test pairs"
    save_figure(figure, tmp_path / "pr.png")
    with Image.open(tmp_path / "pr.png") as image:
        assert image.format == "PNG" and image.size[0] > 100
    assert figure.axes == []  # closed


def test_pr_curve_needs_positives():
    with pytest.raises(ValueError, match="no positive pairs"):
        pr_curve_figure([0, 0], [0.1, 0.2], "none")


def test_similarity_histogram_figure(tmp_path):
    labels, scores = _pairs()
    figure = similarity_histogram_figure(labels, scores, 0.5, "scores")
    legend = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
    assert legend == [
        f"positives (n={labels.sum()})",
        f"negatives (n={len(labels) - labels.sum()})",
        "threshold = 0.500",
    ]
    save_figure(figure, tmp_path / "plots" / "hist.png")
    assert (tmp_path / "plots" / "hist.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    without_threshold = similarity_histogram_figure(labels, scores, None, "scores")
    assert len(without_threshold.axes[0].get_legend().get_texts()) == 2
