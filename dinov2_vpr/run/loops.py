"""Loop closures in an image sequence: ``python -m dinov2_vpr.run.loops --images FOLDER --threshold T --exclude-recent N``.

For each frame, the earlier frames at least ``--threshold`` similar, leaving out the
``--exclude-recent`` frames just before it. Writes the candidates as a pair list in the training
format (``loop_candidates.txt``, paths relative to the sequence folder, so it plugs into
``dinov2_vpr.run.eval --dataset-root FOLDER`` and into a SLAM back end), a CSV with the
similarities, ``similarity_matrix.png`` and ``loops.json``. With ground truth (``--positions``
CSV ``name,x,y`` or ``--positions-from-names``) the pair list has a label column and
``loops.json`` the precision, recall, AP and recall at 100% precision of the detections.
Runs under torchrun, or on SLURM with ``--slurm`` (see :mod:`dinov2.run.submit`).
"""

import argparse
import logging
from pathlib import Path

import numpy as np

from dinov2 import distributed
from dinov2.run.submit import add_launcher_args, submit_or_run
from dinov2_vpr.data.images import list_images
from dinov2_vpr.descriptors import describe_image_files, save_descriptor_files
from dinov2_vpr.loop_report import format_loop_summary, positions_from_names, write_loop_report
from dinov2_vpr.retrieval.geo import read_positions_csv
from dinov2_vpr.run.model_options import get_model_args_parser, model_description, setup_descriptor_run

logger = logging.getLogger("dinov2")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dinov2_vpr.run.loops",
        description="Loop-closure candidates in an ordered image sequence",
        parents=[get_model_args_parser()],
        add_help=add_help,
    )
    parser.add_argument("--images", required=True, help="The sequence: a folder (natural file order) or a list file")
    parser.add_argument("--threshold", type=float, help="Lowest cosine similarity of a loop (default: the head's)")
    parser.add_argument("--exclude-recent", type=int, required=True, help="Frames just before each frame not to match")
    parser.add_argument("--top-k", type=int, help="At most this many candidates per frame (default: all)")
    truth = parser.add_mutually_exclusive_group()
    truth.add_argument("--positions", help="Ground truth: CSV with columns name,x,y (name as in the pair list)")
    truth.add_argument(
        "--positions-from-names",
        action="store_true",
        help="Ground truth from file names: <frame>@<x>@<y>.jpg or the VPR benchmark's @<utm_east>@<utm_north>@...",
    )
    parser.add_argument(
        "--positive-dist-threshold", type=float, default=25.0, help="Metres within which a loop is true"
    )
    parser.add_argument("--chunk-size", type=int, default=1024, help="Frames per similarity tile (bounds the memory)")
    parser.add_argument(
        "--save-descriptors", action="store_true", help="Also write descriptors.npy and image_paths.txt"
    )
    return add_launcher_args(parser)


def frame_names(image_paths: list[Path], source: str | Path) -> list[str]:
    """Each image's path relative to the sequence folder (or the list file's folder), absolute when outside it."""
    source = Path(source)
    root = (source if source.is_dir() else source.parent).resolve()
    names = []
    for path in image_paths:
        resolved = path.resolve()
        names.append(resolved.relative_to(root).as_posix() if resolved.is_relative_to(root) else str(resolved))
    return names


def main(args: argparse.Namespace) -> dict:
    """Describe the sequence and write the loop candidates; returns the ``loops.json`` summary (rank 0) or ``{}``."""
    if args.exclude_recent < 0:
        raise SystemExit(f"error: --exclude-recent must be 0 or more; got {args.exclude_recent}")
    if args.top_k is not None and args.top_k < 1:
        raise SystemExit(f"error: --top-k must be at least 1; got {args.top_k}")
    cfg, head_state = setup_descriptor_run(args)
    threshold = args.threshold
    if threshold is None and head_state is not None:
        threshold = head_state["threshold"]
    if threshold is None:
        raise SystemExit("error: zero-shot loop detection needs --threshold (a cosine similarity)")
    image_paths = list_images(args.images)
    names = frame_names(image_paths, args.images)
    positions: np.ndarray | None = None
    if args.positions:
        positions = read_positions_csv(args.positions, names)
    elif args.positions_from_names:
        positions = positions_from_names(image_paths)
    logger.info(
        "%d frames from %s; loop threshold %.4f, excluding the %d previous frames",
        len(names),
        args.images,
        threshold,
        args.exclude_recent,
    )
    descriptors = describe_image_files(cfg, args.pretrained_weights, head_state, image_paths, args.output_dir)
    if not distributed.is_main_process():
        return {}
    extra = {"model": model_description(cfg, args)}
    if args.save_descriptors:
        extra["descriptor_files"] = save_descriptor_files(args.output_dir, descriptors, image_paths)
    summary = write_loop_report(
        descriptors,
        names,
        args.output_dir,
        threshold,
        args.exclude_recent,
        args.top_k,
        positions,
        args.positive_dist_threshold,
        args.chunk_size,
        extra=extra,
    )
    print(format_loop_summary(summary))
    return summary


if __name__ == "__main__":
    submit_or_run(get_args_parser().parse_args(), main)
