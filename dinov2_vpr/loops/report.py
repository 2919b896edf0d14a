"""Loop closures of an ordered image sequence as files: a pair list, a CSV, a similarity image, metrics.

``write_loop_report(descriptors, frame_names, output_dir, ...)`` is pure given the descriptors, so
it is the whole loop-detection command apart from describing the images.
"""

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dinov2_vpr.data.pairs import write_pair_list
from dinov2_vpr.io import atomic_write_text
from dinov2_vpr.loops.sequence import (
    best_earlier_match,
    find_loop_candidates,
    loop_detection_metrics,
    similarity_matrix_image,
)

PAIR_LIST_FILE = "loop_candidates.txt"
CANDIDATES_CSV = "loop_candidates.csv"
SIMILARITY_IMAGE = "similarity_matrix.png"
REPORT_FILE = "loops.json"


def _json_ready(value):
    """NaN (a metric without ground truth to measure) as null, so that the file is strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: _json_ready(item) for key, item in value.items()}
    return value


def candidates_csv_text(rows: list[list], with_truth: bool, header: bool = True) -> str:
    """Rows of ``loop_candidates.csv`` (frame numbers, names, similarity[, distance, true_loop]) as CSV text."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if header:
        columns = ["query_frame", "match_frame", "query", "match", "similarity"]
        writer.writerow(columns + (["distance", "true_loop"] if with_truth else []))
    writer.writerows(rows)
    return buffer.getvalue()


def write_loop_report(
    descriptors: np.ndarray,
    frame_names: Sequence[str],
    output_dir: str | Path,
    threshold: float,
    exclude_recent: int,
    top_k: int | None = None,
    positions: np.ndarray | None = None,
    radius: float = 25.0,
    chunk_size: int = 1024,
    extra: dict | None = None,
) -> dict:
    """Find loop candidates and write them with a similarity image and a JSON summary.

    A candidate is a pair (i, j) with ``j < i - exclude_recent`` and cosine similarity
    ``>= threshold`` (at most ``top_k`` per frame). Files in ``output_dir``:

    - ``loop_candidates.txt``: the pairs ``frame_i, frame_j[, label]`` in the training-list format,
      the label (1: within ``radius``, else 0) only with ``positions``;
    - ``loop_candidates.csv``: frame indices, names and similarity (and distance, label);
    - ``similarity_matrix.png``: the (downsampled) similarity matrix;
    - ``loops.json``: the settings, counts and, with ``positions``, the per-frame detection metrics of
      :func:`dinov2_vpr.loops.sequence.loop_detection_metrics` and the share of candidates that are true loops.

    Args:
        descriptors: ``(N, D)`` unit descriptors in sequence order.
        frame_names: the name written for each frame (paths relative to the sequence folder).
        output_dir: where the files go.
        threshold: lowest similarity of a candidate.
        exclude_recent: frames just before each frame that are not loop matches.
        top_k: most candidates per frame (the most similar); None: all.
        positions: ``(N, 2)`` positions (metres) as ground truth, or None.
        radius: largest distance (metres) of a true loop.
        chunk_size: frames per similarity tile (bounds the memory).
        extra: more entries for ``loops.json`` (e.g. the model that made the descriptors).

    Returns:
        The summary written to ``loops.json``.
    """
    if len(frame_names) != len(descriptors):
        raise ValueError(f"{len(frame_names)} frame names for {len(descriptors)} descriptors")
    if positions is not None and len(positions) != len(descriptors):
        raise ValueError(f"{len(positions)} positions for {len(descriptors)} frames")
    output_dir = Path(output_dir)
    candidates = find_loop_candidates(descriptors, threshold, exclude_recent, chunk_size, top_k)
    rows = [[c.query, c.match, frame_names[c.query], frame_names[c.match], f"{c.similarity:.6f}"] for c in candidates]
    pairs = [(frame_names[c.query], frame_names[c.match]) for c in candidates]
    summary: dict = {
        "frames": len(descriptors),
        "threshold": threshold,
        "exclude_recent": exclude_recent,
        "top_k": top_k,
        "candidates": len(candidates),
        "frames_with_candidates": len({c.query for c in candidates}),
    }
    if positions is not None:
        positions = np.asarray(positions, dtype=np.float64)
        distances = [float(np.linalg.norm(positions[c.query] - positions[c.match])) for c in candidates]
        labels = [int(distance <= radius) for distance in distances]
        pairs = [(*pair, label) for pair, label in zip(pairs, labels)]
        for row, distance, label in zip(rows, distances, labels):
            row += [f"{distance:.3f}", label]
        best_j, best_sim = best_earlier_match(descriptors, exclude_recent, chunk_size)
        summary.update(
            radius=radius,
            true_candidates=sum(labels),
            candidate_precision=sum(labels) / len(labels) if labels else math.nan,
            metrics=loop_detection_metrics(best_j, best_sim, positions, radius, exclude_recent, threshold),
        )
    if pairs:
        write_pair_list(output_dir / PAIR_LIST_FILE, pairs)
    else:  # an empty list is a valid answer: no frame looks like an earlier one
        atomic_write_text(output_dir / PAIR_LIST_FILE, "")
    atomic_write_text(output_dir / CANDIDATES_CSV, candidates_csv_text(rows, positions is not None))
    similarity_matrix_image(descriptors, output_dir / SIMILARITY_IMAGE, chunk_size=chunk_size)
    summary["files"] = {
        "pair_list": PAIR_LIST_FILE,
        "candidates": CANDIDATES_CSV,
        "similarity_matrix": SIMILARITY_IMAGE,
    }
    summary = _json_ready({**summary, **(extra or {})})
    atomic_write_text(output_dir / REPORT_FILE, json.dumps(summary, indent=2))
    return summary


def format_loop_summary(summary: dict) -> str:
    """A few lines for the console: the candidates and, with ground truth, the detection metrics."""
    lines = [
        (
            f"{summary['candidates']} loop candidates in {summary['frames_with_candidates']} of {summary['frames']} "
            f"frames (similarity >= {summary['threshold']:.4f}, excluding the {summary['exclude_recent']} previous frames)"
        )
    ]
    if "metrics" in summary:
        metrics = summary["metrics"]

        def show(key: str) -> str:
            return "-" if metrics.get(key) is None else f"{metrics[key]:.4f}"

        precision = summary["candidate_precision"]
        lines.append(
            f"{summary['true_candidates']} candidates within {summary['radius']:g} m"
            + ("" if precision is None else f" (precision {precision:.4f})")
        )
        lines.append(
            f"best match per frame: {metrics['true_loop_frames']} frames with a true loop, "
            f"AP {show('average_precision')}, R@100P {show('recall_at_100_precision')}, best F1 {show('best_f1')}; "
            f"at the threshold precision {show('precision_at_threshold')}, recall {show('recall_at_threshold')}"
        )
    return "\n".join(lines)
