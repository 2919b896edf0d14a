"""Benchmark index memory and Recall@K of full float32, float16, PCA and whitened PCA descriptors in one run.

The descriptors have place structure: each place has a centre in a random low-rank subspace; an
image of it is the centre plus a view offset in that subspace plus isotropic noise in every
dimension, L2-normalised (``--database`` images, ``--images-per-place`` per place, and
``--queries`` images of random places). Places lie 50 m apart on a line, so a query's positives
(within 25 m) are the database images of its place. The database is generated in chunks.

Index memory is the stored codes (``ntotal x sa_code_size``) and the growth of the process's
resident memory while the index is built; a PCA also keeps its ``D x D_in`` projection (listed
apart). The PCA is fitted with faiss on ``--pca-train-size`` database rows (the queries never).

Run: .venv/bin/python bench/bench_compression.py [--database 50000 --queries 1000 --dim 8448 --pca-dim 512]
"""

import argparse
import time

import numpy as np

from dinov2_vpr.retrieval.compression import fit_pca
from dinov2_vpr.retrieval.recall import positives_within, recall_at_k
from dinov2_vpr.retrieval.search import build_index, search

K_VALUES = (1, 5, 10)
PLACE_SPACING_M = 50.0
_CHUNK = 4096


def resident_bytes() -> int:
    """This process's resident memory now (Linux ``/proc/self/statm``)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


def place_descriptors(
    places: np.ndarray, basis: np.ndarray, centres: np.ndarray, view: float, noise: float, seed: int
) -> np.ndarray:
    """Unit descriptors of images of ``places``: centre + view offset in the subspace + isotropic noise."""
    rng = np.random.default_rng(seed)
    dim, rank = basis.shape
    out = np.empty((len(places), dim), dtype=np.float32)
    for start in range(0, len(places), _CHUNK):
        chunk = places[start : start + _CHUNK]
        latent = centres[chunk] + view * rng.standard_normal((len(chunk), rank), dtype=np.float32)
        rows = latent @ basis.T
        rows += noise * rng.standard_normal(rows.shape, dtype=np.float32)
        out[start : start + len(chunk)] = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return out


def measure(name: str, database: np.ndarray, queries: np.ndarray, positives, float16: bool = False) -> dict:
    """Build an exact index (float16 storage or not), search, and report memory, time and Recall@K."""
    before = resident_bytes()
    started = time.perf_counter()
    index = build_index(database, "exact", float16=float16)
    built = time.perf_counter()
    grown = resident_bytes() - before
    _, predictions = search(index, queries, max(K_VALUES))
    searched = time.perf_counter()
    codes = index.ntotal * index.sa_code_size()
    return {
        "name": name,
        "dim": index.d,
        "codes_bytes": codes,
        "rss_growth_bytes": grown,
        "build_s": built - started,
        "search_s": searched - built,
        "recalls": recall_at_k(predictions, positives, K_VALUES),
    }


def report(result: dict, full: dict | None = None) -> dict:
    """Print one table row (the loss and memory ratio against ``full``); return ``result``."""
    full = full or result
    recalls = " / ".join(f"{result['recalls'][k]:.3f}" for k in K_VALUES)
    loss = " / ".join(f"{100 * (full['recalls'][k] - result['recalls'][k]):+.1f}" for k in K_VALUES)
    print(
        f"{result['name']} | {result['dim']} | {result['codes_bytes'] / 2**20:.1f} "
        f"({result['codes_bytes'] / full['codes_bytes']:.4f}x) | {result['rss_growth_bytes'] / 2**20:.1f} | "
        f"{result['search_s']:.2f} | {recalls} | {loss}",
        flush=True,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", type=int, default=50000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=8448)
    parser.add_argument("--rank", type=int, default=256, help="Dimension of the place subspace")
    parser.add_argument("--images-per-place", type=int, default=5)
    parser.add_argument("--view", type=float, default=2.0, help="Spread of an image around its place centre")
    parser.add_argument("--noise", type=float, default=0.3, help="Isotropic noise per dimension")
    parser.add_argument("--pca-dim", type=int, default=512)
    parser.add_argument("--pca-train-size", type=int, default=2048)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    num_places = args.database // args.images_per_place
    basis = rng.standard_normal((args.dim, args.rank), dtype=np.float32) / np.sqrt(args.dim)
    centres = rng.standard_normal((num_places, args.rank), dtype=np.float32)
    database_places = np.repeat(np.arange(num_places), args.images_per_place)
    query_places = rng.integers(0, num_places, args.queries)
    started = time.perf_counter()
    database = place_descriptors(database_places, basis, centres, args.view, args.noise, seed=1)
    queries = place_descriptors(query_places, basis, centres, args.view, args.noise, seed=2)
    print(
        f"{args.database} x {args.dim} database ({database.nbytes / 2**30:.2f} GiB float32), {args.queries} queries, "
        f"{num_places} places, generated in {time.perf_counter() - started:.1f} s",
        flush=True,
    )
    place_xy = np.stack([PLACE_SPACING_M * np.arange(num_places), np.zeros(num_places)], axis=1)
    positives = positives_within(place_xy[database_places], place_xy[query_places], PLACE_SPACING_M / 2)

    print(
        "variant | dim | index codes MiB (x full) | RSS growth MiB | search s | R@1 / R@5 / R@10 | loss vs full (points)"
    )
    full = report(measure("full float32", database, queries, positives))
    report(measure("float16", database, queries, positives, float16=True), full)
    for whiten in (False, True):
        name = f"PCA {args.pca_dim}{' + whitening' if whiten else ''}"
        started = time.perf_counter()
        pca = fit_pca(database, args.pca_dim, whiten=whiten, train_size=args.pca_train_size)
        fitted = time.perf_counter()
        reduced_database, reduced_queries = pca.transform(database), pca.transform(queries)
        print(
            f"({name}: fit on {args.pca_train_size} rows {fitted - started:.1f} s, "
            f"transform {time.perf_counter() - fitted:.1f} s, projection {pca.projection.nbytes / 2**20:.1f} MiB)",
            flush=True,
        )
        report(measure(name, reduced_database, reduced_queries, positives), full)
        if whiten:
            report(measure(f"{name} + float16", reduced_database, reduced_queries, positives, float16=True), full)


if __name__ == "__main__":
    main()
