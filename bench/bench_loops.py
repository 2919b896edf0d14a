"""Benchmark chunked loop-closure detection on 10,000 frames x 256-d descriptors.

A 5 km circuit is driven four times (2,500 frames a lap, slightly offset each lap); descriptors are
random Fourier features of the position plus noise. Each step reports its time and its peak of
numpy/Python allocations (tracemalloc), next to the size of the full N x N float32 similarity
matrix that the chunked code never holds, and to a full-matrix reference computation.

Run: .venv/bin/python bench/bench_loops.py [--frames 10000 --dim 256 --chunk-size 1024]
"""

import argparse
import resource
import time
import tracemalloc
from collections.abc import Callable

import numpy as np

from dinov2_vpr.loops import (
    best_earlier_match,
    downsampled_similarity,
    find_loop_candidates,
    loop_detection_metrics,
    true_loops,
)

RADIUS = 10.0
EXCLUDE_RECENT = 100
THRESHOLD = 0.3


def circuit(num_frames: int, laps: int = 4, seed: int = 0) -> np.ndarray:
    """Positions (metres) of ``laps`` drives around a 5 km circuit, each lap offset by up to 2 m."""
    rng = np.random.default_rng(seed)
    frames_per_lap = num_frames // laps
    angles = np.linspace(0, 2 * np.pi, frames_per_lap, endpoint=False)
    radius = 5000 / (2 * np.pi) * (1 + 0.2 * np.sin(3 * angles))
    lap = np.stack([radius * np.cos(angles), radius * np.sin(angles)], axis=1)
    positions = np.concatenate([lap + rng.uniform(-2, 2, size=2) for _ in range(laps)])
    return np.concatenate([positions, positions[: num_frames - len(positions)]])


def place_descriptors(positions: np.ndarray, dim: int, noise: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    phases = positions @ rng.normal(scale=1 / 8.0, size=(2, dim // 2))
    features = np.concatenate([np.cos(phases), np.sin(phases)], axis=1)
    features += rng.normal(scale=noise, size=features.shape)
    return (features / np.linalg.norm(features, axis=1, keepdims=True)).astype(np.float32)


def measured(step: Callable[[], object]) -> tuple[object, float, float]:
    """Run ``step``; return its result, seconds and peak traced allocation in MiB."""
    tracemalloc.start()
    started = time.perf_counter()
    result = step()
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return result, seconds, peak


def full_matrix_best_match(descriptors: np.ndarray, exclude_recent: int) -> np.ndarray:
    """Reference without chunks: the whole similarity matrix, masked to eligible pairs."""
    similarities = descriptors @ descriptors.T
    similarities[~np.tri(len(descriptors), k=-(exclude_recent + 1), dtype=bool)] = -np.inf
    return np.where(np.arange(len(descriptors)) > exclude_recent, similarities.argmax(axis=1), -1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--chunk-size", type=int, default=1024)
    args = parser.parse_args()

    positions = circuit(args.frames)
    descriptors = place_descriptors(positions, args.dim, noise=1.2)
    chunk = args.chunk_size
    full_mib = args.frames**2 * 4 / 2**20
    rows = []

    (best_j, best_sim), seconds, peak = measured(lambda: best_earlier_match(descriptors, EXCLUDE_RECENT, chunk))
    rows.append(("best_earlier_match", seconds, peak))
    candidates, seconds, peak = measured(
        lambda: find_loop_candidates(descriptors, THRESHOLD, EXCLUDE_RECENT, chunk, top_k=1)
    )
    rows.append((f"find_loop_candidates (top_k=1, >= {THRESHOLD})", seconds, peak))
    _, seconds, peak = measured(lambda: true_loops(positions, RADIUS, EXCLUDE_RECENT, chunk))
    rows.append(("true_loops", seconds, peak))
    metrics, seconds, peak = measured(
        lambda: loop_detection_metrics(best_j, best_sim, positions, RADIUS, EXCLUDE_RECENT, threshold=THRESHOLD)
    )
    rows.append(("loop_detection_metrics", seconds, peak))
    _, seconds, peak = measured(lambda: downsampled_similarity(descriptors, max_side=1024, chunk_size=chunk))
    rows.append(("downsampled_similarity (1024 px)", seconds, peak))
    reference_j, seconds, peak = measured(lambda: full_matrix_best_match(descriptors, EXCLUDE_RECENT))
    rows.append(("full-matrix reference best match", seconds, peak))
    assert np.array_equal(reference_j, best_j), "chunked and full-matrix best matches differ"

    print(
        f"{args.frames:,} frames x {args.dim}-d, chunk {chunk}, exclude_recent {EXCLUDE_RECENT}; "
        f"a full {args.frames:,} x {args.frames:,} float32 matrix is {full_mib:.0f} MiB"
    )
    print(f"{'step':<44} {'seconds':>8} {'peak MiB':>9} {'of full matrix':>15}")
    for name, seconds, peak in rows:
        print(f"{name:<44} {seconds:>8.2f} {peak:>9.1f} {peak / full_mib:>14.1%}")
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"process peak RSS {peak_rss:.0f} MiB (includes the full-matrix reference)")
    print(
        f"loop candidates {len(candidates):,}; frames with a true loop {metrics['true_loop_frames']:,}, "
        f"AP {metrics['average_precision']:.3f}, recall at 100% precision {metrics['recall_at_100_precision']:.3f}, "
        f"best F1 {metrics['best_f1']:.3f} at {metrics['best_f1_threshold']:.3f}, "
        f"at {THRESHOLD}: precision {metrics['precision_at_threshold']:.3f} recall {metrics['recall_at_threshold']:.3f}"
    )


if __name__ == "__main__":
    main()
