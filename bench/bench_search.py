"""Benchmark exact, IVF and HNSW search of clustered 256-d descriptors (100,000 by default) with 1,000 queries.

Each index kind runs in a fresh process, so that its peak memory (ru_maxrss) is its own. Recall@1
of an approximate index is the fraction of queries whose top-1 equals the exact search's top-1;
the top-10 overlap is the fraction of the exact top-10 that the approximate top-10 holds.

Run: .venv/bin/python bench/bench_search.py [--database 100000 --queries 1000 --dim 256 --kinds exact ivf hnsw]
(index settings: --nlist --nprobe --hnsw-m --ef-search --ef-construction; unset: build_index's defaults)
"""

import argparse
import resource
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import faiss
import numpy as np

from dinov2_vpr.retrieval.search import build_index, describe_index, search

K = 10


def clustered_descriptors(num_database: int, num_queries: int, dim: int, seed: int = 0):
    """Database rows around 1,000 random centres; queries are noisy copies of database rows."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((1000, dim), dtype=np.float32)
    database = centres[rng.integers(0, len(centres), num_database)]
    database += rng.standard_normal(database.shape, dtype=np.float32) * 1.5
    database /= np.linalg.norm(database, axis=1, keepdims=True)
    queries = database[rng.integers(0, num_database, num_queries)]
    queries = queries + rng.standard_normal(queries.shape, dtype=np.float32) * (1.0 / np.sqrt(dim))
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    return database, queries


def run_kind(kind: str, num_database: int, num_queries: int, dim: int, settings: dict) -> dict:
    """Build and search one index kind (in a fresh process); timings, top-1 rows and peak memory."""
    database, queries = clustered_descriptors(num_database, num_queries, dim)
    data_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    index = build_index(database, kind, **settings)
    built = time.perf_counter()
    _, rows = search(index, queries, K)
    searched = time.perf_counter()
    return {
        "kind": kind,
        "settings": {key: value for key, value in describe_index(index).items() if key != "size"},
        "build_s": built - started,
        "search_s": searched - built,
        "rows": rows,
        "index_mib": faiss.serialize_index(index).nbytes / 2**20,
        "data_peak_mib": data_peak / 1024,
        "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--kinds", nargs="+", default=["exact", "ivf", "hnsw"], help="exact first: the reference")
    parser.add_argument("--nlist", type=int)
    parser.add_argument("--nprobe", type=int)
    parser.add_argument("--hnsw-m", type=int)
    parser.add_argument("--ef-search", type=int)
    parser.add_argument("--ef-construction", type=int)
    args = parser.parse_args()
    options = ("nlist", "nprobe", "hnsw_m", "ef_search", "ef_construction")
    settings = {name: getattr(args, name) for name in options if getattr(args, name) is not None}

    results = {}
    for kind in args.kinds:
        with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
            results[kind] = pool.submit(run_kind, kind, args.database, args.queries, args.dim, settings).result()
    exact = results["exact"]
    print(
        f"{args.database:,} database x {args.dim}-d descriptors, {args.queries:,} queries, top-{K}, "
        f"{faiss.omp_get_max_threads()} faiss threads"
    )
    print(
        f"{'index':<6} {'settings':<46} {'build s':>8} {'search s':>9} {'queries/s':>10} {'speed-up':>9} "
        f"{'R@1 vs exact':>12} {'top-10 overlap':>14} {'index MiB':>10} {'peak MiB':>9} {'+ over data':>11}"
    )
    for kind, result in results.items():
        settings = ", ".join(f"{key}={value}" for key, value in result["settings"].items() if key != "kind")
        agreement = float(np.mean(result["rows"][:, 0] == exact["rows"][:, 0]))
        overlap = np.mean(
            [np.isin(rows, exact_rows).mean() for rows, exact_rows in zip(result["rows"], exact["rows"], strict=True)]
        )
        print(
            f"{kind:<6} {settings or '-':<46} {result['build_s']:>8.2f} {result['search_s']:>9.3f} "
            f"{args.queries / result['search_s']:>10.0f} {exact['search_s'] / result['search_s']:>8.1f}x "
            f"{agreement:>12.3f} {overlap:>14.3f} {result['index_mib']:>10.1f} {result['peak_mib']:>9.0f} "
            f"{result['peak_mib'] - result['data_peak_mib']:>11.0f}"
        )


if __name__ == "__main__":
    main()
