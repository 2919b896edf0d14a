"""Descriptors of a folder or list of images: ``python -m dinov2_vpr.run.extract --images SRC --output DIR ...``.

Writes ``descriptors.npy`` (one unit descriptor a row, float32 or with ``--float16`` float16),
``image_paths.txt`` (the absolute image paths, same order) and ``descriptors.json`` (model,
settings, dimension, count). Backbone features go through the feature cache, so a second run
on the same images (or one after an interruption) encodes only what is missing. Under
``torchrun --nproc_per_node=N -m dinov2_vpr.run.extract ...`` the ranks share the encoding and
rank 0 writes the files; ``--slurm`` with the launcher options of :mod:`dinov2.run.submit`
submits the same command to SLURM.
"""

import argparse
import json
import logging
from pathlib import Path

from dinov2 import distributed
from dinov2.run.cli import run_cli
from dinov2.run.submit import add_launcher_args
from dinov2_vpr.data.images import list_images
from dinov2_vpr.features.descriptors import describe_image_files, save_descriptor_files
from dinov2_vpr.io import atomic_write_text
from dinov2_vpr.run.model_options import get_model_args_parser, model_description, setup_descriptor_run

logger = logging.getLogger("dinov2")

INFO_FILE = "descriptors.json"


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dinov2_vpr.run.extract",
        description="Describe every image of a folder or list file",
        parents=[get_model_args_parser()],
        add_help=add_help,
    )
    parser.add_argument("--images", required=True, help="A folder (searched recursively) or a text file of image paths")
    parser.add_argument("--output", dest="output_dir", help="Output folder (same as --output-dir)")
    parser.add_argument("--float16", action="store_true", help="Save the descriptors as float16 (half the size)")
    return add_launcher_args(parser)


def main(args: argparse.Namespace) -> dict:
    """Describe the images and write the descriptor files to ``args.output_dir``; returns the JSON summary."""
    cfg, head_state = setup_descriptor_run(args)
    image_paths = list_images(args.images)
    logger.info("Describing %d images from %s", len(image_paths), args.images)
    descriptors = describe_image_files(cfg, args.pretrained_weights, head_state, image_paths, args.output_dir)
    dtype = "float16" if args.float16 else "float32"
    info = {
        "model": model_description(cfg, args),
        "settings": {"images": str(Path(args.images).resolve()), "dtype": dtype},
        "dimension": int(descriptors.shape[1]),
        "count": len(image_paths),
    }
    if distributed.is_main_process():
        info["files"] = save_descriptor_files(args.output_dir, descriptors, image_paths, dtype)
        atomic_write_text(Path(args.output_dir) / INFO_FILE, json.dumps(info, indent=2))
        logger.info(
            "%d descriptors of dimension %d (%s) written to %s",
            len(image_paths),
            descriptors.shape[1],
            dtype,
            Path(args.output_dir) / info["files"]["descriptors"],
        )
    return info


if __name__ == "__main__":
    run_cli(get_args_parser(), main)
