"""Benchmark the online loop detector: per-frame latency of ``add`` at growing map sizes, and the streaming command.

Maps: a long drive (a random walk of 2 m steps), descriptors random Fourier features of the position
plus noise (similarity falls from about 0.8 at the same place to chance beyond about 20 m); generated
directly at 256-d and 512-d. Each map is loaded with ``extend`` (no search); then ``--queries`` new
frames are added one by one with ``add`` (search + insert, descriptors given) and timed: half of
them drive again along stretches of the map (true loops), half along new roads. Recall is the share
of the exact index's candidates that an approximate index also returns, on the same frames.

The second part runs ``python -m dinov2_vpr.run.loops --follow`` in this process on a generated
sequence of 224 x 224 frames with a random ViT-S/14 (the timing is that of real weights) and
reports frames/s, the per-frame steps and the backbone's share of the time.

Run: .venv/bin/python bench/bench_online_loops.py [--sizes 10000 100000 1000000 --dims 256 512 --stream-frames 40]
"""

import argparse
import gc
import resource
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from dinov2_vpr.loops import IndexSettings, OnlineLoopDetector

STEP_M = 2.0
FREQUENCY_SCALE = 1 / 10.0  # radians per metre of the Fourier features
NOISE = 0.5
SEGMENTS = 10  # query stretches


def walk(num_frames: int, rng: np.random.Generator) -> np.ndarray:
    """Positions of a drive that turns slowly and never stops (2 m a frame)."""
    heading = np.cumsum(rng.normal(scale=0.05, size=num_frames))
    steps = STEP_M * np.stack([np.cos(heading), np.sin(heading)], axis=1)
    return np.cumsum(steps, axis=0)


def place_descriptors(
    positions: np.ndarray, frequencies: np.ndarray, rng: np.random.Generator, chunk: int = 65536
) -> np.ndarray:
    """Unit descriptors: Fourier features of the positions plus noise, in chunks to bound the memory."""
    dim = 2 * frequencies.shape[1]
    out = np.empty((len(positions), dim), dtype=np.float32)
    for start in range(0, len(positions), chunk):
        phases = (positions[start : start + chunk] @ frequencies).astype(np.float32)
        block = np.concatenate([np.cos(phases), np.sin(phases)], axis=1) / np.sqrt(dim / 2)
        block += rng.normal(scale=NOISE / np.sqrt(dim), size=block.shape).astype(np.float32)
        out[start : start + chunk] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def make_map(size: int, dim: int, num_queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(map_descriptors, query_descriptors)``: revisits of random stretches, alternating with new roads."""
    rng = np.random.default_rng(seed)
    frequencies = rng.normal(scale=FREQUENCY_SCALE, size=(2, dim // 2))
    positions = walk(size, rng)
    per_segment = max(1, num_queries // SEGMENTS)
    queries = []
    for segment in range(SEGMENTS):
        count = per_segment if segment < SEGMENTS - 1 else num_queries - per_segment * (SEGMENTS - 1)
        if segment % 2 == 0:  # drive again along a stretch of the map, up to 1.5 m off
            start = int(rng.integers(0, size - count))
            queries.append(positions[start : start + count] + rng.uniform(-1.5, 1.5, size=2))
        else:  # a new road far from the map
            queries.append(walk(count, rng) + np.array([1e7, 1e7]) * (segment + 1))
    return place_descriptors(positions, frequencies, rng), place_descriptors(np.concatenate(queries), frequencies, rng)


def run_index(settings: IndexSettings, database: np.ndarray, queries: np.ndarray, args) -> dict:
    """Load the map with ``extend``, then time ``add`` of every query frame."""
    detector = OnlineLoopDetector(args.threshold, args.exclude_recent, args.top_k, settings)
    started = time.perf_counter()
    detector.extend(list(range(len(database))), database)
    build = time.perf_counter() - started
    latencies, candidates = [], set()
    for offset, descriptor in enumerate(queries):
        frame = len(database) + offset
        started = time.perf_counter()
        found = detector.add(frame, descriptor)
        latencies.append(time.perf_counter() - started)
        candidates.update((c.query, c.match) for c in found)
    milliseconds = np.asarray(latencies) * 1000
    return {
        "build_s": build,
        "median_ms": float(np.median(milliseconds)),
        "p99_ms": float(np.percentile(milliseconds, 99)),
        "candidates": candidates,
        "searching": detector.describe_index()["searching"]["kind"],
        "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def latency_table(args) -> None:
    print(
        f"add() latency: threshold {args.threshold}, exclude_recent {args.exclude_recent}, top_k {args.top_k}, "
        f"{args.queries} frames added after each map is loaded; {faiss.omp_get_max_threads()} faiss threads"
    )
    print(
        f"{'dim':>4} {'map':>9} {'index':<6} {'searching':<9} {'load s':>8} {'median ms':>10} {'p99 ms':>8} "
        f"{'speed-up':>9} {'candidates':>10} {'recall vs exact':>15} {'peak RSS MiB':>12}"
    )
    for dim in args.dims:
        for size in args.sizes:
            database, queries = make_map(size, dim, args.queries)
            exact = None
            for kind in args.indexes:
                settings = IndexSettings(
                    kind=kind,
                    hnsw_m=args.hnsw_m,
                    ef_search=args.ef_search,
                    ef_construction=args.ef_construction,
                    nlist=args.nlist,
                    nprobe=args.nprobe,
                )
                result = run_index(settings, database, queries, args)
                exact = result if kind == "exact" else exact
                recall = "-"
                speed_up = "-"
                if exact is not None and kind != "exact":
                    found = exact["candidates"]
                    recall = f"{len(found & result['candidates']) / len(found):.4f}" if found else "n/a"
                    speed_up = f"{exact['median_ms'] / result['median_ms']:.1f}x"
                print(
                    f"{dim:>4} {size:>9,} {kind:<6} {result['searching']:<9} {result['build_s']:>8.1f} "
                    f"{result['median_ms']:>10.3f} {result['p99_ms']:>8.3f} {speed_up:>9} "
                    f"{len(result['candidates']):>10} {recall:>15} {result['peak_mib']:>12.0f}",
                    flush=True,
                )
                del result
                gc.collect()
            del database, queries, exact
            gc.collect()


def stream_benchmark(num_frames: int) -> None:
    """The streaming command on ``num_frames`` generated 224 x 224 frames, ViT-S/14 on the CPU."""
    import torch

    from dinov2_vpr.data.synthetic import make_sequence
    from dinov2_vpr.models.descriptor import load_place_model
    from dinov2_vpr.run import loops

    repo = Path(__file__).resolve().parents[1]
    config = str(repo / "dinov2/configs/eval/vits14_pretrain.yaml")
    with tempfile.TemporaryDirectory() as folder:
        drive = make_sequence(Path(folder) / "drive", num_frames=num_frames, revisit_segments=2, segment_length=5)
        argv = ["--config-file", config, "--random-backbone", "--zero-shot", "gem", "--follow", str(drive["images"])]
        argv += ["--output-dir", str(Path(folder) / "out"), "--threshold", "0.9", "--exclude-recent", "5"]
        argv += ["--settle", "0", "--idle-timeout", "1", "--poll-interval", "0.05"]
        summary = loops.main(loops.get_args_parser().parse_args(argv))
        model = load_place_model(config_file=config, random_backbone=True, zero_shot="gem")
        image = torch.randn(1, 3, 224, 224)
        with torch.inference_mode():
            model.backbone.forward_features(image)  # warm-up
            times = []
            for _ in range(10):
                started = time.perf_counter()
                model.backbone.forward_features(image)
                times.append(time.perf_counter() - started)
    latency = summary["latency_ms"]
    backbone_ms = float(np.median(times)) * 1000
    total = latency["total"]["median"]
    print(
        f"\nStreaming command, ViT-S/14 at 224 x 224 on {torch.get_num_threads()} CPU threads, {num_frames} frames, "
        f"exact index: {summary['frames_per_s']:.2f} frames/s"
    )
    print(f"{'step':<10} {'median ms':>10} {'p99 ms':>8} {'share of median':>16}")
    for step in ("read", "describe", "add", "total"):
        print(
            f"{step:<10} {latency[step]['median']:>10.2f} {latency[step]['p99']:>8.2f} "
            f"{latency[step]['median'] / total:>15.1%}"
        )
    print(f"backbone forward alone (batch 1): {backbone_ms:.1f} ms, {backbone_ms / total:.1%} of a frame")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--dims", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--indexes", nargs="+", default=["exact", "hnsw", "ivf"], help="exact first: recall needs it")
    parser.add_argument("--queries", type=int, default=500, help="Frames added (and timed) after loading each map")
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--exclude-recent", type=int, default=50)
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--hnsw-m", type=int, default=IndexSettings.hnsw_m)
    parser.add_argument("--ef-search", type=int, default=IndexSettings.ef_search)
    parser.add_argument("--ef-construction", type=int, default=IndexSettings.ef_construction)
    parser.add_argument("--nlist", type=int, default=IndexSettings.nlist)
    parser.add_argument("--nprobe", type=int, default=IndexSettings.nprobe)
    parser.add_argument("--stream-frames", type=int, default=40, help="Frames of the streaming run (0: skip it)")
    args = parser.parse_args()
    if args.sizes:
        latency_table(args)
    if args.stream_frames:
        stream_benchmark(args.stream_frames)


if __name__ == "__main__":
    main()
