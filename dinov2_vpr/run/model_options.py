"""Options and set-up shared by the commands: every command's first steps, and the descriptor options of
those that describe images (eval, extract, retrieval, loops)."""

import argparse
import logging
import sys
from pathlib import Path

from omegaconf import DictConfig

from dinov2 import distributed
from dinov2.eval.setup import get_args_parser as get_setup_args_parser
from dinov2.logging import setup_logging
from dinov2.utils.errors import InputError
from dinov2_vpr.config import setup_vpr_config
from dinov2_vpr.models import PlaceDescriptor, load_place_model
from dinov2_vpr.models.backbone import check_weights_choice
from dinov2_vpr.models.build import METHOD_AGGREGATORS, choice_options
from dinov2_vpr.models.descriptor_config import ZERO_SHOT_INPUTS, configure_descriptor, model_info

logger = logging.getLogger("dinov2")


def add_backbone_args(parser: argparse.ArgumentParser, cache: bool = True) -> argparse.ArgumentParser:
    """``--random-backbone`` and, with ``cache``, ``--cache-dir``; returns ``parser``."""
    parser.add_argument("--random-backbone", action="store_true", help="No weights: random backbone, for tests only")
    if cache:
        parser.add_argument("--cache-dir", help="Feature cache folder (default: <output-dir>/feature_cache)")
    return parser


def add_descriptor_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Which model describes the images: ``--head``, ``--zero-shot``, ``--method`` or ``--model``; returns ``parser``."""
    parser.add_argument("--head", help="A trained head.pth or a training output folder (default: zero-shot)")
    parser.add_argument(
        "--zero-shot",
        choices=sorted(ZERO_SHOT_INPUTS),
        help="Without --head: the class token (cls, the default) or GeM over the patch tokens (gem) as descriptor",
    )
    parser.add_argument(
        "--method",
        choices=sorted(METHOD_AGGREGATORS),
        help="SALAD or BoQ: --pretrained-weights is then the method's released file (dino_salad.ckpt, "
        "dinov2_12288.pth) and its official preprocessing applies (322x322)",
    )
    parser.add_argument(
        "--model",
        help="A place model trained here (its run folder or model.pth): --pretrained-weights is then the DINOv2 "
        "backbone it was trained on; its backbone architecture, aggregator and preprocessing come from the file",
    )
    return parser


def get_model_args_parser() -> argparse.ArgumentParser:
    """The shared options of the commands that describe images: the backbone's, the cache's and the model's."""
    parser = argparse.ArgumentParser(add_help=False, parents=[get_setup_args_parser(add_help=False)])
    return add_descriptor_args(add_backbone_args(parser))


def check_backbone_args(args: argparse.Namespace) -> None:
    """Exactly one of ``--pretrained-weights`` and ``--random-backbone``."""
    check_weights_choice(args.pretrained_weights, args.random_backbone)


def check_model_args(args: argparse.Namespace) -> None:
    """Reject contradictory or missing model options before any work starts."""
    check_backbone_args(args)
    if args.model and (args.method or args.head or args.zero_shot):
        raise InputError("--model makes its own descriptors: give it without --method, --head or --zero-shot")
    if args.method and (args.head or args.zero_shot):
        raise InputError(f"--method {args.method} makes its own descriptors: give it without --head or --zero-shot")
    if args.head and args.zero_shot:
        raise InputError("--zero-shot describes images without a head; give either --head or --zero-shot")


def setup_run(args: argparse.Namespace, recipe: str | None = None) -> DictConfig:
    """What every command does first: join the process group, build and write the config (over the
    training ``recipe`` of a method, if any; with ``--cache-dir`` as ``vpr.features.cache_dir``), log to
    the output folder, log the command line.
    """
    distributed.enable()
    if args.cache_dir:
        args.opts = list(args.opts or []) + [f"vpr.features.cache_dir={Path(args.cache_dir).resolve()}"]
    cfg = setup_vpr_config(args, recipe)
    setup_logging(args.output_dir)
    logger.info("Command: %s", " ".join(sys.argv))
    logger.info("Arguments: %s", vars(args))
    return cfg


def setup_descriptor_run(args: argparse.Namespace) -> tuple[DictConfig, dict | None]:
    """:func:`setup_run` after checking the model options, then choose the head.

    Returns:
        The config (``vpr.head`` set for the head or the zero-shot pooling) and the head file's
        contents (None for zero-shot).
    """
    check_model_args(args)
    args.opts = [*choice_options(args.method, args.model), *(args.opts or [])]
    cfg = setup_run(args)
    head_state = configure_descriptor(cfg, args.head, args.zero_shot)
    if cfg.vpr.model.trained:
        logger.info(
            "--model: the trained %s model %s describes the images", cfg.vpr.model.method, cfg.vpr.model.trained
        )
    elif cfg.vpr.model.method:
        logger.info("--method %s: its released model describes the images", cfg.vpr.model.method)
    elif head_state is None:
        logger.info("No --head: zero-shot descriptors (%s pooling of the backbone tokens)", args.zero_shot or "cls")
    return cfg, head_state


def load_command_model(args: argparse.Namespace) -> PlaceDescriptor:
    """The command's model in memory, after :func:`setup_descriptor_run` (whose ``--opts`` hold the choice
    of ``--method`` or ``--model``), for the work that needs the model itself rather than cached descriptors."""
    return load_place_model(
        head=args.head,
        pretrained_weights=args.pretrained_weights,
        config_file=args.config_file,
        opts=list(args.opts or []),
        random_backbone=args.random_backbone,
        zero_shot=args.zero_shot,
    )


def model_description(cfg: DictConfig, args: argparse.Namespace) -> dict:
    """:func:`dinov2_vpr.models.descriptor_config.model_info` of the command's options, with its config file and options."""
    return {
        **model_info(cfg, args.head, args.zero_shot, args.pretrained_weights),
        "model": cfg.vpr.model.trained,
        "config_file": args.config_file,
        "opts": list(args.opts or []),
    }
