"""Recall@K on a VPR benchmark: ``python -m dinov2_vpr.run.retrieval --dataset-folder ROOT ...``.

``ROOT`` holds ``database/`` and ``queries/`` (searched recursively), images named with their UTM
position (``@<east>@<north>@...@.jpg``) as the common VPR datasets downloader prepares Pitts30k,
Tokyo 24/7, MSLS, SF-XL and St Lucia. A database image is a positive for a query within
``--positive-dist-threshold`` metres. Writes ``metrics.json``, ``predictions.csv``,
``recall_at_k.png``, query pictures on request (``preds/``, with BoQ's attention on the query with
``--save-attention``) and the descriptors on request. For large maps, ``--pca-dim`` (``--pca-whiten``)
and ``--float16`` compress the descriptors; the PCA is saved to ``pca.npz`` and the loss against the
full descriptors is reported.
Runs under torchrun, or on SLURM with ``--slurm`` (see :mod:`dinov2.run.submit`).
"""

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from dinov2 import distributed
from dinov2.run.cli import run_cli
from dinov2.run.submit import add_launcher_args
from dinov2.utils.errors import InputError
from dinov2_vpr.data.images import list_images
from dinov2_vpr.data.positions import utm_positions
from dinov2_vpr.features.descriptors import describe_image_files, save_descriptor_files
from dinov2_vpr.io import atomic_write_text
from dinov2_vpr.retrieval.attention import attention_heatmaps
from dinov2_vpr.retrieval.compression import PCA_FILE, fit_pca
from dinov2_vpr.retrieval.pictures import picture_queries
from dinov2_vpr.retrieval.recall import RetrievalResult, evaluate_retrieval
from dinov2_vpr.retrieval.report import format_recall_table, write_retrieval_files
from dinov2_vpr.retrieval.search import INDEX_KINDS
from dinov2_vpr.run.model_options import (
    get_model_args_parser,
    load_command_model,
    model_description,
    setup_descriptor_run,
)

logger = logging.getLogger("dinov2")

METRICS_FILE = "metrics.json"
INDEX_OPTIONS = ("nlist", "nprobe", "hnsw_m", "ef_search", "ef_construction")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dinov2_vpr.run.retrieval",
        description="Recall@K of place retrieval on a VPR benchmark",
        parents=[get_model_args_parser()],
        add_help=add_help,
    )
    parser.add_argument("--dataset-folder", required=True, help="Folder holding database/ and queries/")
    parser.add_argument("--database-folder", help="Database images (default: <dataset-folder>/database)")
    parser.add_argument("--queries-folder", help="Query images (default: <dataset-folder>/queries)")
    parser.add_argument(
        "--positive-dist-threshold", type=float, default=25.0, help="Metres within which a result is correct"
    )
    parser.add_argument("--recall-values", type=int, nargs="+", default=[1, 5, 10, 20], help="The K of Recall@K")
    parser.add_argument(
        "--index", choices=INDEX_KINDS, default="exact", help="faiss index: exact, or approximate ivf/hnsw"
    )
    parser.add_argument("--nlist", type=int, help="IVF lists (default about 4*sqrt(database size))")
    parser.add_argument("--nprobe", type=int, help="IVF lists searched per query (default nlist/16)")
    parser.add_argument("--hnsw-m", type=int, help="HNSW neighbours per node (default 32)")
    parser.add_argument("--ef-search", type=int, help="HNSW search candidate list (default 128)")
    parser.add_argument("--ef-construction", type=int, help="HNSW build candidate list (default 80)")
    parser.add_argument(
        "--pca-dim",
        type=int,
        help="Reduce the descriptors to this many dimensions by PCA fitted on the database (saved to pca.npz)",
    )
    parser.add_argument("--pca-whiten", action="store_true", help="With --pca-dim: whiten the PCA")
    parser.add_argument(
        "--pca-train-size",
        type=int,
        help="With --pca-dim: fit on this many database descriptors drawn at random (default: all)",
    )
    parser.add_argument(
        "--float16", action="store_true", help="Store the (reduced) descriptors in float16, in the index and files"
    )
    parser.add_argument(
        "--save-descriptors",
        action="store_true",
        help="Also write the database and query descriptors (as searched: reduced, float16)",
    )
    parser.add_argument(
        "--num-preds-to-save",
        type=int,
        default=0,
        help="Top results in each query picture (0: no pictures; at most the largest recall value)",
    )
    parser.add_argument(
        "--num-queries-to-save", type=int, help="Queries that get a picture, spread evenly (default: all)"
    )
    parser.add_argument(
        "--save-only-wrong-preds", action="store_true", help="Pictures only of queries whose top-1 is wrong"
    )
    parser.add_argument(
        "--save-attention", action="store_true", help="With --method boq: overlay BoQ's attention on the query pictures"
    )
    return add_launcher_args(parser)


def _check_args(args: argparse.Namespace) -> None:
    if min(args.recall_values) < 1:
        raise InputError(f"--recall-values must be positive; got {args.recall_values}")
    if not args.positive_dist_threshold > 0:
        raise InputError(f"--positive-dist-threshold must be positive; got {args.positive_dist_threshold}")
    if not 0 <= args.num_preds_to_save <= max(args.recall_values):
        raise InputError(
            f"--num-preds-to-save must be between 0 and the largest recall value {max(args.recall_values)}; "
            f"got {args.num_preds_to_save}"
        )
    if args.num_queries_to_save is not None and args.num_queries_to_save < 1:
        raise InputError(f"--num-queries-to-save must be at least 1; got {args.num_queries_to_save}")
    if args.pca_dim is None and (args.pca_whiten or args.pca_train_size is not None):
        raise InputError("--pca-whiten and --pca-train-size set up the PCA: give --pca-dim too")
    if args.pca_dim is not None and args.pca_dim < 1:
        raise InputError(f"--pca-dim must be at least 1; got {args.pca_dim}")
    if args.pca_train_size is not None and args.pca_train_size < 2:
        raise InputError(f"--pca-train-size must be at least 2; got {args.pca_train_size}")
    if args.save_attention and args.method != "boq":
        raise InputError(
            "--save-attention needs --method boq: only BoQ's aggregator has attention maps"
            + (f" (--method {args.method} has none)" if args.method else "")
        )
    if args.save_attention and args.num_preds_to_save == 0:
        raise InputError("--save-attention draws on the query pictures: give --num-preds-to-save too")


def _check_pca_dim(args: argparse.Namespace, num_database: int, descriptor_dim: int | None = None) -> None:
    """``--pca-dim`` below the number of descriptors the PCA is fitted on, and at most their dimension."""
    if args.pca_dim is None:
        return
    num_train = min(num_database, args.pca_train_size or num_database)
    if args.pca_dim >= num_train:
        raise InputError(
            f"--pca-dim {args.pca_dim} must be smaller than the {num_train} database descriptors the PCA is "
            f"fitted on ({num_train} centred vectors span at most {num_train - 1} dimensions)"
        )
    if descriptor_dim is not None and args.pca_dim > descriptor_dim:
        raise InputError(f"--pca-dim {args.pca_dim} exceeds the descriptor dimension {descriptor_dim}")


def _query_attention(
    args: argparse.Namespace, result: RetrievalResult, query_paths: list[Path]
) -> dict[int, np.ndarray]:
    """BoQ's attention heat map of each query that gets a picture, by query row."""
    rows = picture_queries(result.predictions, result.positives, args.num_queries_to_save, args.save_only_wrong_preds)
    model = load_command_model(args)
    logger.info("Attention maps of the %d queries with a picture", len(rows))
    heatmaps = attention_heatmaps(model, [query_paths[row] for row in rows])
    return dict(zip((int(row) for row in rows), heatmaps, strict=True))


def main(args: argparse.Namespace) -> dict:
    """Describe database and queries, search, and write the results; returns the metrics (rank 0) or ``{}``."""
    _check_args(args)
    cfg, head_state = setup_descriptor_run(args)
    root = Path(args.dataset_folder)
    database_paths = list_images(args.database_folder or root / "database")
    query_paths = list_images(args.queries_folder or root / "queries")
    database_xy, query_xy = utm_positions(database_paths), utm_positions(query_paths)
    if max(args.recall_values) > len(database_paths):
        raise InputError(
            f"--recall-values up to {max(args.recall_values)} exceed the {len(database_paths)} database images"
        )
    _check_pca_dim(args, len(database_paths))
    logger.info("%d database images and %d queries under %s", len(database_paths), len(query_paths), root)
    descriptors = describe_image_files(
        cfg, args.pretrained_weights, head_state, database_paths + query_paths, args.output_dir
    )
    database_desc, query_desc = descriptors[: len(database_paths)], descriptors[len(database_paths) :]
    if not distributed.is_main_process():
        return {}

    _check_pca_dim(args, len(database_paths), descriptors.shape[1])
    pca = None
    if args.pca_dim is not None:
        pca = fit_pca(database_desc, args.pca_dim, whiten=args.pca_whiten, train_size=args.pca_train_size)
        pca.save(Path(args.output_dir) / PCA_FILE)
    index_params = {name: getattr(args, name) for name in INDEX_OPTIONS if getattr(args, name) is not None}
    result = evaluate_retrieval(
        database_desc,
        query_desc,
        database_xy,
        query_xy,
        args.recall_values,
        radius=args.positive_dist_threshold,
        index_kind=args.index,
        pca=pca,
        float16=args.float16,
        **index_params,
    )
    files = write_retrieval_files(
        result,
        query_paths,
        database_paths,
        args.output_dir,
        args.num_preds_to_save,
        args.num_queries_to_save,
        args.save_only_wrong_preds,
        _query_attention(args, result, query_paths) if args.save_attention else None,
    )
    if pca is not None:
        files["pca"] = PCA_FILE
    if args.save_descriptors:
        dtype = "float16" if args.float16 else "float32"
        for prefix, desc, paths in (
            ("database_", database_desc, database_paths),
            ("queries_", query_desc, query_paths),
        ):
            stored = pca.transform(desc) if pca is not None else desc
            files[f"{prefix}descriptors"] = save_descriptor_files(args.output_dir, stored, paths, dtype, prefix)
    metrics = {
        **result.summary(),
        "positive_dist_threshold": args.positive_dist_threshold,
        "dataset_folder": str(root.resolve()),
        "model": model_description(cfg, args),
        "files": files,
    }
    atomic_write_text(Path(args.output_dir) / METRICS_FILE, json.dumps(metrics, indent=2))
    print(format_recall_table(result, args.positive_dist_threshold))
    return metrics


if __name__ == "__main__":
    run_cli(get_args_parser(), main)
