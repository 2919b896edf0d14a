"""Loop-closure detection in an ordered sequence of descriptors, computed block by block.

Frame ``j`` is an eligible loop match for frame ``i`` when ``j < i - exclude_recent`` (it is earlier,
and not one of the ``exclude_recent`` frames just before ``i``, which look alike because the camera
has barely moved). No function here holds the NxN similarity matrix: similarities are computed as
``chunk_size x chunk_size`` tiles of matrix products over earlier frames only.
"""

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from scipy.spatial.distance import cdist
from sklearn.metrics import precision_recall_curve

from dinov2_vpr.io import atomic_write
from dinov2_vpr.retrieval.search import as_descriptors

# A frame's name: its index in a sequence here, any int or string id in an online map.
FrameId = int | str


@dataclass(frozen=True)
class LoopCandidate:
    """Frame ``query`` looks like the earlier frame ``match`` (``match < query - exclude_recent`` in frame order).

    Offline (:func:`find_loop_candidates`) both are frame indices; online
    (:class:`dinov2_vpr.loops.online.OnlineLoopDetector`) they are the frame ids given to ``add``.
    """

    query: FrameId
    match: FrameId
    similarity: float


def _check_settings(exclude_recent: int, chunk_size: int) -> None:
    if exclude_recent < 0:
        raise ValueError(f"exclude_recent must be 0 or more; got {exclude_recent}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1; got {chunk_size}")


def _as_positions(positions: np.ndarray) -> np.ndarray:
    array = np.asarray(positions, dtype=np.float64)
    if array.ndim != 2 or not np.isfinite(array).all():
        raise ValueError(f"positions must be a finite (num_frames, 2) array; got shape {array.shape}")
    return array


def _eligible_tiles(
    num_frames: int, exclude_recent: int, chunk_size: int, row_start: int
) -> Iterator[tuple[int, int, np.ndarray | None]]:
    """Column tiles ``[start, stop)`` of earlier frames for the row block starting at ``row_start``.

    Yields ``(start, stop, eligible)`` where ``eligible`` is the ``(rows, stop - start)`` mask of
    pairs with ``j < i - exclude_recent``, or None when every pair of the tile is eligible.
    """
    row_stop = min(row_start + chunk_size, num_frames)
    columns_end = row_stop - 1 - exclude_recent  # one past the last frame eligible for the block's last row
    for start in range(0, max(columns_end, 0), chunk_size):
        stop = min(start + chunk_size, columns_end)
        if stop - 1 < row_start - exclude_recent:
            yield start, stop, None
        else:
            rows = np.arange(row_start, row_stop)[:, None]
            yield start, stop, np.arange(start, stop)[None, :] < rows - exclude_recent


def _similarity_tiles(
    descriptors: np.ndarray, exclude_recent: int, chunk_size: int, row_start: int
) -> Iterator[tuple[int, np.ndarray]]:
    """``(column_start, similarities)`` tiles for a row block; ineligible pairs hold -inf."""
    rows = descriptors[row_start : row_start + chunk_size]
    for start, stop, eligible in _eligible_tiles(len(descriptors), exclude_recent, chunk_size, row_start):
        tile = rows @ descriptors[start:stop].T
        if eligible is not None:
            tile[~eligible] = -np.inf
        yield start, tile


def _concatenate(parts: list[tuple[np.ndarray, ...]]) -> tuple[np.ndarray, ...]:
    return tuple(np.concatenate(column) for column in zip(*parts, strict=True))


def _sort_candidates(
    queries: np.ndarray, matches: np.ndarray, similarities: np.ndarray, top_k: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Order by query, then similarity (highest first), then match; keep the first ``top_k`` per query."""
    order = np.lexsort((matches, -similarities, queries))
    queries, matches, similarities = queries[order], matches[order], similarities[order]
    if top_k is not None:
        rank_in_query = np.arange(len(queries)) - np.searchsorted(queries, queries, side="left")
        keep = rank_in_query < top_k
        queries, matches, similarities = queries[keep], matches[keep], similarities[keep]
    return queries, matches, similarities


def find_loop_candidates(
    descriptors: np.ndarray,
    threshold: float,
    exclude_recent: int,
    chunk_size: int = 1024,
    top_k: int | None = None,
) -> list[LoopCandidate]:
    """All pairs (i, j) with ``j < i - exclude_recent`` and cosine similarity ``>= threshold``.

    Args:
        descriptors: ``(N, D)`` L2-normalised descriptors in sequence order.
        threshold: lowest similarity reported.
        exclude_recent: how many frames just before each frame are not loop matches.
        chunk_size: frames per tile side; memory is about ``chunk_size**2 * 4`` bytes plus the results.
        top_k: keep at most this many matches per frame (the most similar); None keeps all.

    Returns:
        Candidates ordered by query frame, then by similarity (highest first), then by match frame.
    """
    descriptors = as_descriptors(descriptors, "descriptors")
    _check_settings(exclude_recent, chunk_size)
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be at least 1 (or None for all); got {top_k}")
    found = [(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))]
    for row_start in range(0, len(descriptors), chunk_size):
        block_start = len(found)
        for column_start, tile in _similarity_tiles(descriptors, exclude_recent, chunk_size, row_start):
            rows, columns = np.nonzero(tile >= threshold)
            found.append((rows + row_start, columns + column_start, tile[rows, columns]))
            if top_k is not None:  # keep only each row's best top_k so far, bounding memory
                found[block_start:] = [_sort_candidates(*_concatenate(found[block_start:]), top_k)]
    queries, matches, similarities = _sort_candidates(*_concatenate(found), top_k)
    return [
        LoopCandidate(int(query), int(match), float(similarity))
        for query, match, similarity in zip(queries, matches, similarities, strict=True)
    ]


def best_earlier_match(
    descriptors: np.ndarray, exclude_recent: int, chunk_size: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """For each frame, the most similar eligible earlier frame (``j < i - exclude_recent``).

    Returns:
        ``(best_j, best_sim)``: int64 frame indices (the earliest on ties) and float32 similarities;
        -1 and -inf for frames without an eligible earlier frame.
    """
    descriptors = as_descriptors(descriptors, "descriptors")
    _check_settings(exclude_recent, chunk_size)
    best_j = np.full(len(descriptors), -1, dtype=np.int64)
    best_sim = np.full(len(descriptors), -np.inf, dtype=np.float32)
    for row_start in range(0, len(descriptors), chunk_size):
        block_j = best_j[row_start : row_start + chunk_size]
        block_sim = best_sim[row_start : row_start + chunk_size]
        for column_start, tile in _similarity_tiles(descriptors, exclude_recent, chunk_size, row_start):
            columns = tile.argmax(axis=1)
            similarities = tile[np.arange(len(tile)), columns]
            better = similarities > block_sim
            block_j[better] = columns[better] + column_start
            block_sim[better] = similarities[better]
    return best_j, best_sim


def downsampled_similarity(descriptors: np.ndarray, max_side: int = 1024, chunk_size: int = 1024) -> np.ndarray:
    """The similarity matrix shrunk to at most ``max_side x max_side`` cells, computed in tiles.

    Frames are grouped into consecutive bins of ``step = ceil(N / max_side)``; cell (a, b) holds the
    highest similarity between a frame of bin a and a frame of bin b, so that a revisit (a thin
    off-diagonal line) stays visible after shrinking.
    """
    descriptors = as_descriptors(descriptors, "descriptors")
    _check_settings(0, chunk_size)
    if max_side < 1:
        raise ValueError(f"max_side must be at least 1; got {max_side}")
    num_frames = len(descriptors)
    step = math.ceil(num_frames / max_side)
    bins = np.arange(num_frames) // step
    side = int(bins[-1]) + 1
    shrunk = np.full((side, side), -np.inf, dtype=np.float32)
    for row_start in range(0, num_frames, chunk_size):
        row_bins = bins[row_start : row_start + chunk_size]
        row_firsts = np.flatnonzero(np.diff(row_bins, prepend=-1))
        for column_start in range(0, row_start + 1, chunk_size):  # lower triangle; mirrored below
            column_bins = bins[column_start : column_start + chunk_size]
            column_firsts = np.flatnonzero(np.diff(column_bins, prepend=-1))
            rows = descriptors[row_start : row_start + chunk_size]
            tile = rows @ descriptors[column_start : column_start + chunk_size].T
            pooled = np.maximum.reduceat(np.maximum.reduceat(tile, row_firsts, axis=0), column_firsts, axis=1)
            cells = shrunk[row_bins[0] : row_bins[-1] + 1, column_bins[0] : column_bins[-1] + 1]
            np.maximum(cells, pooled, out=cells)
    return np.maximum(shrunk, shrunk.T)


def similarity_matrix_image(
    descriptors: np.ndarray, path: str | Path, max_side: int = 1024, chunk_size: int = 1024
) -> None:
    """Save a PNG of the (downsampled, see `downsampled_similarity`) similarity matrix with a colour bar."""
    shrunk = downsampled_similarity(descriptors, max_side, chunk_size)
    num_frames = len(descriptors)
    step = math.ceil(num_frames / max_side)
    figure = Figure(figsize=(7, 6), layout="constrained")
    axes = figure.add_subplot()
    image = axes.imshow(shrunk, cmap="viridis", extent=(0, num_frames, num_frames, 0))
    figure.colorbar(image, ax=axes, label="cosine similarity")
    axes.set_xlabel("frame")
    axes.set_ylabel("frame")
    pooling = f", max over {step}x{step} blocks" if step > 1 else ""
    axes.set_title(f"Similarity of {num_frames} frames{pooling}")
    with atomic_write(path, "wb") as file:
        figure.savefig(file, format="png", dpi=150)


def true_loops(positions: np.ndarray, radius: float, exclude_recent: int, chunk_size: int = 1024) -> np.ndarray:
    """``(N,)`` bool: does an eligible earlier frame (``j < i - exclude_recent``) lie within ``radius`` of frame i."""
    positions = _as_positions(positions)
    _check_settings(exclude_recent, chunk_size)
    if not radius > 0:
        raise ValueError(f"radius must be positive; got {radius}")
    has_loop = np.zeros(len(positions), dtype=bool)
    for row_start in range(0, len(positions), chunk_size):
        rows = positions[row_start : row_start + chunk_size]
        for start, stop, eligible in _eligible_tiles(len(positions), exclude_recent, chunk_size, row_start):
            near = cdist(rows, positions[start:stop]) <= radius
            if eligible is not None:
                near &= eligible
            has_loop[row_start : row_start + len(rows)] |= near.any(axis=1)
    return has_loop


@dataclass(frozen=True)
class _Detections:
    """Per-frame outcome of taking each frame's best earlier match as its loop detection."""

    evaluated: np.ndarray  # the frame has an eligible earlier frame
    correct: np.ndarray  # its best match lies within the radius
    num_true_loops: int  # frames with an eligible earlier frame within the radius


def _detections(
    best_j: np.ndarray, best_sim: np.ndarray, positions: np.ndarray, radius: float, exclude_recent: int
) -> _Detections:
    positions = _as_positions(positions)
    best_j = np.asarray(best_j)
    best_sim = np.asarray(best_sim)
    if best_j.shape != (len(positions),) or best_sim.shape != best_j.shape:
        raise ValueError(
            f"best_j {best_j.shape} and best_sim {best_sim.shape} must hold one value per frame ({len(positions)})"
        )
    frames = np.arange(len(positions))
    evaluated = frames > exclude_recent
    eligible_j = (best_j >= 0) & (best_j < frames - exclude_recent)
    if (best_j[~evaluated] != -1).any() or not eligible_j[evaluated].all():
        raise ValueError(
            f"best_j does not match exclude_recent={exclude_recent}: each frame i needs an earlier frame "
            f"j < i - {exclude_recent}, or -1 when there is none; compute it with best_earlier_match using "
            "the same exclude_recent"
        )
    if not np.isfinite(best_sim[evaluated]).all():
        raise ValueError("best_sim must be finite for every frame that has an eligible earlier frame")
    distances = np.linalg.norm(positions - positions[np.maximum(best_j, 0)], axis=1)
    correct = evaluated & (distances <= radius)
    num_true_loops = int(true_loops(positions, radius, exclude_recent).sum())
    return _Detections(evaluated, correct, num_true_loops)


def loop_precision_recall_curve(
    best_j: np.ndarray, best_sim: np.ndarray, positions: np.ndarray, radius: float, exclude_recent: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision and recall of loop detection over all thresholds (definition in `loop_detection_metrics`).

    Returns:
        ``(precision, recall, thresholds)`` as scikit-learn's ``precision_recall_curve``: increasing
        thresholds, and a final point (precision 1, recall 0) without a threshold.

    Raises:
        ValueError: no frame's best match is correct (the curve is empty).
    """
    detections = _detections(best_j, best_sim, positions, radius, exclude_recent)
    return _curve(detections, np.asarray(best_sim))


def _curve(detections: _Detections, best_sim: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    num_correct = int(detections.correct.sum())
    if num_correct == 0:
        raise ValueError("No frame's best earlier match lies within the radius: the precision-recall curve is empty")
    evaluated = detections.evaluated
    precision, recall, thresholds = precision_recall_curve(detections.correct[evaluated], best_sim[evaluated])
    # scikit-learn's recall counts the correct best matches; frames with a true loop whose best match
    # is wrong are positives too, which scales recall by num_correct / num_true_loops.
    return precision, recall * (num_correct / detections.num_true_loops), thresholds


def loop_detection_metrics(
    best_j: np.ndarray,
    best_sim: np.ndarray,
    positions: np.ndarray,
    radius: float,
    exclude_recent: int,
    threshold: float | None = None,
) -> dict[str, float | int]:
    """Per-frame loop-closure detection metrics of best earlier matches (see `best_earlier_match`).

    Definition: every frame with an eligible earlier frame (``j < i - exclude_recent``) proposes its
    best match ``best_j[i]`` with score ``best_sim[i]``; at threshold t it is a detection when
    ``best_sim[i] >= t``. A detection is a true positive when ``positions[best_j[i]]`` lies within
    ``radius`` of ``positions[i]``, otherwise a false positive. The positives are the frames that
    truly have a loop (an eligible earlier frame within ``radius``, see `true_loops`), so
    ``precision = TP / detections`` and ``recall = TP / frames with a true loop``; a frame with a
    true loop whose best match is wrong can never be recalled.

    Args:
        best_j, best_sim: from `best_earlier_match` with the same ``exclude_recent``.
        positions: ``(N, 2)`` frame positions.
        radius: largest distance of a correct match.
        exclude_recent: as for `best_earlier_match`.
        threshold: also report precision, recall and F1 at this similarity.

    Returns:
        Counts (``frames``, ``evaluated_frames``, ``true_loop_frames``, ``correct_best_matches``) and
        ``average_precision`` (sum of precision x recall steps, as scikit-learn), ``recall_at_100_precision``,
        ``best_f1`` with its ``best_f1_threshold``/``best_f1_precision``/``best_f1_recall``, and with a
        threshold ``precision_at_threshold``/``recall_at_threshold``/``f1_at_threshold``. Metrics are
        NaN when no frame has a true loop, and 0 when no best match is correct.
    """
    best_sim = np.asarray(best_sim)
    detections = _detections(best_j, best_sim, positions, radius, exclude_recent)
    metrics: dict[str, float | int] = {
        "frames": len(best_sim),
        "evaluated_frames": int(detections.evaluated.sum()),
        "true_loop_frames": detections.num_true_loops,
        "correct_best_matches": int(detections.correct.sum()),
    }
    curve_keys = ("average_precision", "recall_at_100_precision", "best_f1")
    best_keys = ("best_f1_threshold", "best_f1_precision", "best_f1_recall")
    if detections.num_true_loops == 0:
        metrics.update(dict.fromkeys(curve_keys + best_keys, math.nan))
    elif metrics["correct_best_matches"] == 0:
        metrics.update(dict.fromkeys(curve_keys, 0.0) | dict.fromkeys(best_keys, math.nan))
    else:
        precision, recall, thresholds = _curve(detections, best_sim)
        f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], np.finfo(float).tiny)
        best = int(np.argmax(f1))
        metrics.update(
            average_precision=float(-np.sum(np.diff(recall) * precision[:-1])),
            recall_at_100_precision=float(recall[precision == 1].max()),
            best_f1=float(f1[best]),
            best_f1_threshold=float(thresholds[best]),
            best_f1_precision=float(precision[best]),
            best_f1_recall=float(recall[best]),
        )
    if threshold is not None:
        detected = detections.evaluated & (best_sim >= threshold)
        true_positives = int((detected & detections.correct).sum())
        precision_at = true_positives / detected.sum() if detected.any() else 1.0
        recall_at = true_positives / detections.num_true_loops if detections.num_true_loops else math.nan
        f1_at = 2 * precision_at * recall_at / (precision_at + recall_at) if precision_at + recall_at else 0.0
        metrics.update(
            threshold=float(threshold),
            precision_at_threshold=float(precision_at),
            recall_at_threshold=float(recall_at),
            f1_at_threshold=float(f1_at),
        )
    return metrics
