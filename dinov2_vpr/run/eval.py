"""Evaluate loop-closure decisions on pair lists: ``python -m dinov2_vpr.run.eval --dataset-root R --pair-lists L ...``.

With ``--head`` (a ``head.pth`` or a training output folder) the trained head describes the images;
without it the raw DINOv2 class token is the descriptor (the training-free, zero-shot baseline).
``--slurm`` with the launcher options of :mod:`dinov2.run.submit` submits it to SLURM instead.
"""

import argparse
import json
import logging
import sys
from pathlib import Path

from dinov2 import distributed
from dinov2.eval.setup import get_args_parser as get_setup_args_parser
from dinov2.logging import setup_logging
from dinov2.run.submit import add_launcher_args, submit_or_run
from dinov2_vpr.config import setup_vpr_config
from dinov2_vpr.data.image_table import index_pairs
from dinov2_vpr.data.pairs import find_pair_lists, read_pair_lists
from dinov2_vpr.descriptor_config import configure_descriptor
from dinov2_vpr.evaluate import cosine_scores, describe_rows, evaluate_pair_list, format_table
from dinov2_vpr.features.pooling import head_input
from dinov2_vpr.io import atomic_write_text
from dinov2_vpr.pipeline import image_features
from dinov2_vpr.train import build_head

logger = logging.getLogger("dinov2")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        "Evaluate loop-closure decisions on pair lists",
        parents=[get_setup_args_parser(add_help=False)],
        add_help=add_help,
    )
    parser.add_argument("--dataset-root", required=True, help="Folder the pair-list paths are relative to")
    parser.add_argument("--pair-lists", nargs="+", required=True, help="Pair list files, or folders of .txt lists")
    parser.add_argument("--head", help="A trained head.pth or a training output folder; none: zero-shot CLS cosine")
    parser.add_argument("--threshold", type=float, help="Decision threshold on the cosine (default: the trained one)")
    parser.add_argument("--random-backbone", action="store_true", help="No weights: random backbone, for tests only")
    parser.add_argument("--cache-dir", help="Feature cache folder (default: <output-dir>/feature_cache)")
    return add_launcher_args(parser)


def main(args: argparse.Namespace) -> dict:
    """Evaluate every list; write per-list files and ``metrics.json`` to ``args.output_dir``."""
    if not args.pretrained_weights and not args.random_backbone:
        raise SystemExit("error: --pretrained-weights is required (or --random-backbone, for testing only)")
    distributed.enable()
    if args.cache_dir:
        args.opts = list(args.opts or []) + [f"vpr.features.cache_dir={Path(args.cache_dir).resolve()}"]
    cfg = setup_vpr_config(args)
    setup_logging(args.output_dir)
    logger.info("Command: %s", " ".join(sys.argv))
    logger.info("Arguments: %s", vars(args))
    head_state = configure_descriptor(cfg, args.head)
    if head_state is None:
        logger.info("No --head: zero-shot evaluation with the raw DINOv2 class token")
    threshold = next(
        (t for t in (args.threshold, cfg.vpr.eval.threshold, head_state and head_state["threshold"]) if t is not None),
        None,
    )
    if threshold is None:
        raise SystemExit("error: zero-shot evaluation needs --threshold (a cosine similarity) to decide loop closures")

    list_files = [
        path for item in args.pair_lists for path in (find_pair_lists(item) if Path(item).is_dir() else [Path(item)])
    ]
    pairs, _ = read_pair_lists(list_files, args.dataset_root, skip_invalid=cfg.vpr.data.skip_invalid)
    image_paths, index = index_pairs(pairs, args.dataset_root)
    features, embed_dim = image_features(cfg, args.pretrained_weights, image_paths, args.output_dir)
    head = build_head(cfg, embed_dim)
    if head_state is not None:
        head.load_state_dict(head_state["head"])
    scores = cosine_scores(describe_rows(head, head_input(features, cfg.vpr.head.input)), index)

    results = []
    if distributed.is_main_process():
        for list_file in list_files:
            rows = [row for row, pair in enumerate(pairs) if pair.source == str(list_file)]
            results.append(
                evaluate_pair_list(
                    list_file.stem, [pairs[row] for row in rows], scores[rows], threshold, args.output_dir
                )
            )
        summary = {"head": str(args.head) if args.head else "zero-shot", "threshold": threshold, "lists": results}
        atomic_write_text(Path(args.output_dir) / "metrics.json", json.dumps(summary, indent=2))
        print(format_table(results))
    return {"threshold": threshold, "lists": results}


if __name__ == "__main__":
    submit_or_run(get_args_parser().parse_args(), main)
