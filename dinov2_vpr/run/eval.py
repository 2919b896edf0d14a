"""Evaluate loop-closure decisions on pair lists: ``python -m dinov2_vpr.run.eval --dataset-root R --pair-lists L ...``.

With ``--head`` (a ``head.pth`` or a training output folder) the trained head describes the images;
without it the raw DINOv2 class token is the descriptor (the training-free, zero-shot baseline).
"""

import argparse
import json
import logging
import sys
from pathlib import Path

from omegaconf import OmegaConf

from dinov2 import distributed
from dinov2.eval.setup import get_args_parser as get_setup_args_parser
from dinov2.logging import setup_logging
from dinov2_vpr.config import setup_vpr_config
from dinov2_vpr.data.image_table import index_pairs
from dinov2_vpr.data.pairs import find_pair_lists, read_pair_lists
from dinov2_vpr.evaluate import cosine_scores, describe_rows, evaluate_pair_list, format_table
from dinov2_vpr.features.pooling import head_input
from dinov2_vpr.io import atomic_write_text
from dinov2_vpr.pipeline import image_features
from dinov2_vpr.run.train import HEAD_FILE, load_head_file
from dinov2_vpr.train import build_head

logger = logging.getLogger("dinov2")

# Settings a head was trained with that must hold for its inputs to mean the same thing.
HEAD_BOUND_KEYS = ("student", "crops.global_crops_size", "vpr.data.image_size")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        "Evaluate loop-closure decisions on pair lists", parents=[get_setup_args_parser(add_help=False)], add_help=add_help
    )
    parser.add_argument("--dataset-root", required=True, help="Folder the pair-list paths are relative to")
    parser.add_argument("--pair-lists", nargs="+", required=True, help="Pair list files, or folders of .txt lists")
    parser.add_argument("--head", help="A trained head.pth or a training output folder; none: zero-shot CLS cosine")
    parser.add_argument("--threshold", type=float, help="Decision threshold on the cosine (default: the trained one)")
    parser.add_argument("--random-backbone", action="store_true", help="No weights: random backbone, for tests only")
    parser.add_argument("--cache-dir", help="Feature cache folder (default: <output-dir>/feature_cache)")
    return parser


def _head_file(path: str) -> Path:
    path = Path(path)
    return path / HEAD_FILE if path.is_dir() else path


def _apply_head_config(cfg, head_state: dict, head_path: Path) -> None:
    """Take ``vpr.head`` from the head file; fail if the backbone or preprocessing differ from its training."""
    trained = OmegaConf.create(head_state["config"])
    for key in HEAD_BOUND_KEYS:
        now, then = OmegaConf.select(cfg, key), OmegaConf.select(trained, key)
        if OmegaConf.to_container(OmegaConf.create({"v": now}))["v"] != OmegaConf.to_container(OmegaConf.create({"v": then}))["v"]:
            raise ValueError(
                f"{key} differs from the training of {head_path}: {then} there, {now} here; "
                "use the config file and options the head was trained with"
            )
    cfg.vpr.head = trained.vpr.head


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
    head_state = None
    if args.head:
        head_path = _head_file(args.head)
        head_state = load_head_file(head_path)
        _apply_head_config(cfg, head_state, head_path)
    else:
        cfg.vpr.head.name, cfg.vpr.head.input = "IdentityHead", "cls"
        logger.info("No --head: zero-shot evaluation with the raw DINOv2 class token")
    threshold = next((t for t in (args.threshold, cfg.vpr.eval.threshold, head_state and head_state["threshold"]) if t is not None), None)
    if threshold is None:
        raise SystemExit("error: zero-shot evaluation needs --threshold (a cosine similarity) to decide loop closures")

    list_files = [path for item in args.pair_lists for path in (find_pair_lists(item) if Path(item).is_dir() else [Path(item)])]
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
            results.append(evaluate_pair_list(list_file.stem, [pairs[row] for row in rows], scores[rows], threshold, args.output_dir))
        summary = {"head": str(args.head) if args.head else "zero-shot", "threshold": threshold, "lists": results}
        atomic_write_text(Path(args.output_dir) / "metrics.json", json.dumps(summary, indent=2))
        print(format_table(results))
    return {"threshold": threshold, "lists": results}


if __name__ == "__main__":
    main(get_args_parser().parse_args())
