"""Evaluate loop-closure decisions on pair lists: ``python -m dinov2_vpr.run.eval --dataset-root R --pair-lists L ...``.

With ``--head`` (a ``head.pth`` or a training output folder) the trained head describes the images;
without it the raw DINOv2 class token (or ``--zero-shot gem``) is the descriptor: the training-free
baseline.
``--slurm`` with the launcher options of :mod:`dinov2.run.submit` submits it to SLURM instead.
"""

import argparse
import json
import logging
from pathlib import Path

import torch

from dinov2 import distributed
from dinov2.run.cli import run_cli
from dinov2.run.submit import add_launcher_args
from dinov2.utils.errors import InputError
from dinov2_vpr.data.image_table import index_pairs
from dinov2_vpr.data.pairs import find_pair_lists, read_pair_lists
from dinov2_vpr.features.descriptors import describe_image_files
from dinov2_vpr.io import atomic_write_text
from dinov2_vpr.run.model_options import get_model_args_parser, model_description, setup_descriptor_run
from dinov2_vpr.verification.evaluate import cosine_scores, evaluate_pair_list, format_table

logger = logging.getLogger("dinov2")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Evaluate loop-closure decisions on pair lists",
        parents=[get_model_args_parser()],
        add_help=add_help,
    )
    parser.add_argument("--dataset-root", required=True, help="Folder the pair-list paths are relative to")
    parser.add_argument("--pair-lists", nargs="+", required=True, help="Pair list files, or folders of .txt lists")
    parser.add_argument("--threshold", type=float, help="Decision threshold on the cosine (default: the trained one)")
    return add_launcher_args(parser)


def main(args: argparse.Namespace) -> dict:
    """Evaluate every list; write per-list files and ``metrics.json`` to ``args.output_dir``."""
    cfg, head_state = setup_descriptor_run(args)
    threshold = next(
        (t for t in (args.threshold, cfg.vpr.eval.threshold, head_state and head_state["threshold"]) if t is not None),
        None,
    )
    if threshold is None:
        raise InputError("zero-shot evaluation needs --threshold (a cosine similarity) to decide loop closures")

    list_files = [
        path for item in args.pair_lists for path in (find_pair_lists(item) if Path(item).is_dir() else [Path(item)])
    ]
    pairs, _ = read_pair_lists(
        list_files,
        args.dataset_root,
        skip_invalid=cfg.vpr.data.skip_invalid,
        allow_outside_root=cfg.vpr.data.allow_outside_root,
    )
    image_paths, index = index_pairs(pairs, args.dataset_root)
    descriptors = describe_image_files(cfg, args.pretrained_weights, head_state, image_paths, args.output_dir)
    scores = cosine_scores(torch.from_numpy(descriptors), index)

    results = []
    if distributed.is_main_process():
        for list_file in list_files:
            rows = [row for row, pair in enumerate(pairs) if pair.source == str(list_file)]
            results.append(
                evaluate_pair_list(
                    list_file.stem, [pairs[row] for row in rows], scores[rows], threshold, args.output_dir
                )
            )
        summary = {"model": model_description(cfg, args), "threshold": threshold, "lists": results}
        atomic_write_text(Path(args.output_dir) / "metrics.json", json.dumps(summary, indent=2))
        print(format_table(results))
    return {"threshold": threshold, "lists": results}


if __name__ == "__main__":
    run_cli(get_args_parser(), main)
