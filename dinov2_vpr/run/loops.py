"""Loop closures in an image sequence: ``python -m dinov2_vpr.run.loops --images FOLDER --threshold T --exclude-recent N``,
or online as frames arrive: ``--follow FOLDER`` (see :mod:`dinov2_vpr.loops.stream`).

For each frame, the earlier frames at least ``--threshold`` similar, leaving out the
``--exclude-recent`` frames just before it. Writes the candidates as a pair list in the training
format (``loop_candidates.txt``, paths relative to the sequence folder, so it plugs into
``dinov2_vpr.run.eval --dataset-root FOLDER`` and into a SLAM back end), a CSV with the
similarities, ``similarity_matrix.png`` and ``loops.json``. With ground truth (``--positions``
CSV ``name,x,y`` or ``--positions-from-names``) the pair list has a label column and
``loops.json`` the precision, recall, AP and recall at 100% precision of the detections.
Runs under torchrun, or on SLURM with ``--slurm`` (see :mod:`dinov2.run.submit`).

With ``--follow`` one process takes the frames in name order as they appear, appends each frame's
candidates to ``loop_candidates.txt``/``.csv``, keeps its map in ``loop_state.npz`` and resumes from
it when run again; ``--stop-after`` and ``--idle-timeout`` end it (Ctrl-C too, after saving).
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
from dinov2_vpr.data.positions import position_from_name, positions_from_names, read_positions_csv
from dinov2_vpr.features.descriptors import describe_image_files, save_descriptor_files
from dinov2_vpr.io import atomic_write_text
from dinov2_vpr.loops.index import IndexSettings
from dinov2_vpr.loops.online import OnlineLoopDetector
from dinov2_vpr.loops.report import REPORT_FILE, format_loop_summary, write_loop_report
from dinov2_vpr.loops.stream import STATE_FILE, StreamOptions, follow_folder
from dinov2_vpr.retrieval.search import INDEX_KINDS
from dinov2_vpr.run.model_options import (
    get_model_args_parser,
    load_command_model,
    model_description,
    setup_descriptor_run,
)

logger = logging.getLogger("dinov2")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dinov2_vpr.run.loops",
        description="Loop-closure candidates in an ordered image sequence",
        parents=[get_model_args_parser()],
        add_help=add_help,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", help="The sequence: a folder (natural file order) or a list file")
    source.add_argument(
        "--follow", help="Online: take the frames of this folder in name order as they appear, until stopped"
    )
    parser.add_argument(
        "--threshold",
        type=float,
        help="Lowest cosine similarity of a loop (default: vpr.eval.threshold, else the head's)",
    )
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
    online = parser.add_argument_group("online (--follow)")
    online.add_argument("--index", choices=INDEX_KINDS, default="exact", help="How the map is searched")
    defaults = IndexSettings()
    online.add_argument("--hnsw-m", type=int, default=defaults.hnsw_m, help="HNSW neighbours per node")
    online.add_argument("--ef-search", type=int, default=defaults.ef_search, help="HNSW search candidate list")
    online.add_argument(
        "--ef-construction", type=int, default=defaults.ef_construction, help="HNSW insertion candidate list"
    )
    online.add_argument(
        "--nlist", type=int, default=defaults.nlist, help="IVF lists (trained once the map holds 64 x nlist frames)"
    )
    online.add_argument("--nprobe", type=int, default=defaults.nprobe, help="IVF lists searched per frame")
    online.add_argument("--stop-after", type=int, help="Stop after this many frames (default: never)")
    online.add_argument("--idle-timeout", type=float, help="Stop once no frame has arrived for this many seconds")
    online.add_argument(
        "--settle", type=float, default=0.5, help="Seconds a frame must stay unchanged before it is read"
    )
    online.add_argument("--poll-interval", type=float, default=0.2, help="Seconds between looks at the folder")
    online.add_argument("--save-every", type=int, default=100, help="Save the map state every this many frames")
    online.add_argument(
        "--state-float16", action="store_true", help="Keep the map's descriptors as float16 (half the memory)"
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


def _threshold(args: argparse.Namespace, cfg, head_state: dict | None) -> float:
    """``--threshold``, else ``vpr.eval.threshold`` (a pair-list model's, ``--model``), else the head's validation threshold."""
    candidates = (args.threshold, cfg.vpr.eval.threshold, head_state and head_state["threshold"])
    threshold = next((value for value in candidates if value is not None), None)
    if threshold is None:
        raise InputError("zero-shot loop detection needs --threshold (a cosine similarity) or vpr.eval.threshold")
    return float(threshold)


def main(args: argparse.Namespace) -> dict:
    """Describe the sequence and write the loop candidates; returns the ``loops.json`` summary (rank 0) or ``{}``."""
    if args.exclude_recent < 0:
        raise InputError(f"--exclude-recent must be 0 or more; got {args.exclude_recent}")
    if args.top_k is not None and args.top_k < 1:
        raise InputError(f"--top-k must be at least 1; got {args.top_k}")
    cfg, head_state = setup_descriptor_run(args)
    threshold = _threshold(args, cfg, head_state)
    if args.follow:
        return follow(args, cfg, threshold)
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


def _position_lookup(args: argparse.Namespace):
    """Ground truth for a frame name (None without a position), or None without ground truth."""
    if args.positions_from_names:

        def from_name(name: str) -> tuple[float, float] | None:
            try:
                return position_from_name(name)
            except ValueError:
                return None

        return from_name
    if args.positions:
        table: dict[str, tuple[float, float]] = {}

        def from_csv(name: str) -> tuple[float, float] | None:
            if name not in table:  # re-read: the CSV may grow with the frames
                try:
                    table[name] = tuple(read_positions_csv(args.positions, [name])[0])
                except ValueError:
                    return None
            return table[name]

        return from_csv
    return None


def _online_detector(args: argparse.Namespace, threshold: float, model, description: dict) -> OnlineLoopDetector:
    """The saved detector of ``--output-dir`` if any (its settings must be these), else a new one."""
    settings = IndexSettings(
        kind=args.index,
        hnsw_m=args.hnsw_m,
        ef_search=args.ef_search,
        ef_construction=args.ef_construction,
        nlist=args.nlist,
        nprobe=args.nprobe,
    )
    fresh = OnlineLoopDetector(
        threshold, args.exclude_recent, args.top_k, settings, model, "float16" if args.state_float16 else "float32"
    )
    fresh.metadata["model"] = description
    state_path = Path(args.output_dir) / STATE_FILE
    if not state_path.is_file():
        return fresh
    detector = OnlineLoopDetector.load(state_path, model)
    changed = [
        f"{name} {saved!r} -> {wanted!r}"
        for name, saved, wanted in (
            ("threshold", detector.threshold, fresh.threshold),
            ("exclude_recent", detector.exclude_recent, fresh.exclude_recent),
            ("top_k", detector.top_k, fresh.top_k),
            ("index", detector.index_settings, fresh.index_settings),
            ("descriptor_dtype", detector.descriptor_dtype, fresh.descriptor_dtype),
            ("model", detector.metadata.get("model"), description),
        )
        if saved != wanted
    ]
    if changed:
        raise InputError(
            f"{state_path} was made with other settings ({'; '.join(changed)}); run with the same settings to "
            "resume, or give a new --output-dir"
        )
    logger.info("Resuming from %s: %d frames in the map", state_path, len(detector))
    return detector


def follow(args: argparse.Namespace, cfg, threshold: float) -> dict:
    """The ``--follow`` mode: the online detector on the frames of a folder as they appear."""
    if distributed.get_world_size() > 1:
        raise InputError("--follow runs in one process; start it without torchrun")
    options = StreamOptions(
        poll_s=args.poll_interval,
        settle_s=args.settle,
        idle_timeout_s=args.idle_timeout,
        stop_after=args.stop_after,
        save_every=args.save_every,
    )
    model = load_command_model(args)
    description = model_description(cfg, args)
    detector = _online_detector(args, threshold, model, description)
    logger.info(
        "Following %s: loop threshold %.4f, excluding the %d previous frames, index %s",
        args.follow,
        threshold,
        args.exclude_recent,
        detector.describe_index(),
    )
    run = follow_folder(
        args.follow,
        detector,
        model,
        args.output_dir,
        options,
        _position_lookup(args),
        args.positive_dist_threshold,
    )
    summary = {
        "threshold": threshold,
        "exclude_recent": args.exclude_recent,
        "top_k": args.top_k,
        "index": detector.describe_index(),
        **run,
        "model": description,
    }
    atomic_write_text(Path(args.output_dir) / REPORT_FILE, json.dumps(summary, indent=2))
    latency = run["latency_ms"]["total"]
    print(
        f"{run['frames_this_run']} frames this run ({run['skipped']} skipped in all), {run['frames']} in the map; "
        f"{run['candidates']} loop candidates in all; {run['frames_per_s']:.2f} frames/s"
        + (
            ""
            if latency["median"] is None
            else f", per frame median {latency['median']:.1f} ms, p99 {latency['p99']:.1f} ms"
        )
    )
    return summary


if __name__ == "__main__":
    run_cli(get_args_parser(), main)
