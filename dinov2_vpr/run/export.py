"""Export backbone and head: ``python -m dinov2_vpr.run.export --head H --format torchscript|onnx --output FILE ...``.

The exported model takes ``(B, 3, H, W)`` images at the config's ``vpr.data.image_size``,
normalised with the ImageNet mean and std, and gives ``(B, D)`` unit descriptors. The export is
checked against the eager model (largest descriptor difference at most ``--tolerance``) and
described in ``FILE.json``.
"""

import argparse
import json
import logging
import sys
from pathlib import Path

from dinov2.eval.setup import get_args_parser as get_setup_args_parser
from dinov2.logging import setup_logging
from dinov2.run.cli import run_cli
from dinov2_vpr.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from dinov2_vpr.io import atomic_write_text
from dinov2_vpr.models.descriptor import load_place_model
from dinov2_vpr.models.export import DEFAULT_TOLERANCE, EXPORT_FORMATS, export_model
from dinov2_vpr.run.model_options import add_backbone_args, add_descriptor_args, check_model_args

logger = logging.getLogger("dinov2")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dinov2_vpr.run.export",
        description="Export a place descriptor model to TorchScript or ONNX",
        parents=[get_setup_args_parser(add_help=False)],
        add_help=add_help,
    )
    parser.set_defaults(output_dir=None)
    add_descriptor_args(add_backbone_args(parser, cache=False))
    parser.add_argument("--format", choices=EXPORT_FORMATS, required=True, help="torchscript (traced) or onnx")
    parser.add_argument("--output", required=True, help="The exported model file (e.g. place_model.pt or .onnx)")
    parser.add_argument(
        "--tolerance", type=float, default=DEFAULT_TOLERANCE, help="Largest allowed difference to eager"
    )
    return parser


def main(args: argparse.Namespace) -> dict:
    """Export, check, and write ``<output>.json``; returns its contents. ``--output-dir`` (optional) gets the log."""
    check_model_args(args)
    if args.output_dir:
        setup_logging(args.output_dir)
    logger.info("Command: %s", " ".join(sys.argv))
    model = load_place_model(
        head=args.head,
        pretrained_weights=args.pretrained_weights,
        config_file=args.config_file,
        opts=args.opts or [],
        random_backbone=args.random_backbone,
        zero_shot=args.zero_shot,
        method=args.method,
        model=args.model,
        device="cpu",
    )
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    info = {
        **export_model(model, output, args.format, args.tolerance),
        "input": {"layout": "NCHW, RGB", "normalisation": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}},
        "model": model.settings,
    }
    atomic_write_text(output.with_name(output.name + ".json"), json.dumps(info, indent=2))
    print(
        f"Exported {args.format} to {output} (input {info['input_shape']}, descriptors of {info['output_dim']}); "
        f"largest difference to the eager model {info['max_abs_difference']:.2e}"
    )
    return info


if __name__ == "__main__":
    run_cli(get_args_parser(), main, launcher=False)
