"""What every evaluation shares: the argument parser and building the frozen backbone."""

import argparse
from collections.abc import Iterable, Sequence

import torch
from omegaconf import DictConfig
from torch import nn

from dinov2 import distributed
from dinov2.models import build_model_from_cfg
from dinov2.utils.config import setup
from dinov2.utils.utils import load_pretrained_weights

_AUTOCAST_DTYPES = {"fp16": torch.half, "bf16": torch.bfloat16, "fp32": torch.float}


def get_args_parser(
    description: str | None = None, parents: Sequence[argparse.ArgumentParser] = (), add_help: bool = True
) -> argparse.ArgumentParser:
    """``--config-file``, ``--pretrained-weights``, ``--output-dir``, ``--opts key=value ...``, ``--trust-pickle``, ``--debug``."""
    parser = argparse.ArgumentParser(description=description, parents=list(parents), add_help=add_help)
    parser.add_argument(
        "--config-file", type=str, help="Model config file (e.g. dinov2/configs/eval/vitl14_pretrain.yaml)"
    )
    parser.add_argument(
        "--pretrained-weights", type=str, help="Backbone weights (an official *_pretrain.pth or a training checkpoint)"
    )
    parser.add_argument("--output-dir", default="./output", type=str, help="Output directory to write results and logs")
    parser.add_argument("--opts", default=[], nargs="+", help="Config overrides as key=value (e.g. vpr.train.lr=0.001)")
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        help="Also load model files that hold pickled objects beyond plain tensors (runs any code they carry; "
        "only for files from a trusted source)",
    )
    parser.add_argument(
        "--debug", action="store_true", help="Show the traceback of input errors (or set DINOV2_VPR_DEBUG=1)"
    )
    return parser


def get_autocast_dtype(config: DictConfig, device: torch.device) -> torch.dtype:
    """The teacher's mixed-precision dtype on GPU; float32 on CPU."""
    if device.type != "cuda":
        return torch.float
    return _AUTOCAST_DTYPES.get(config.compute_precision.teacher.backbone.mixed_precision.param_dtype, torch.float)


def build_model_for_eval(config: DictConfig, pretrained_weights: str | None, device: torch.device) -> nn.Module:
    """The backbone with ``pretrained_weights`` (key ``teacher`` for training checkpoints), frozen, in eval mode.

    With weights the model is built on the meta device and takes the checkpoint's tensors, so no
    memory goes to a random initialisation; ``pretrained_weights=None`` keeps a seeded random one.
    """
    if pretrained_weights:
        with torch.device("meta"):
            model, _ = build_model_from_cfg(config, only_teacher=True)
        load_pretrained_weights(model, pretrained_weights, checkpoint_key="teacher")
    else:
        model, _ = build_model_from_cfg(config, only_teacher=True)
    model.requires_grad_(False)
    return model.eval().to(device)


def setup_and_build_model(
    args: argparse.Namespace, extra_defaults: Iterable[DictConfig] = ()
) -> tuple[nn.Module, torch.dtype]:
    """Config from ``args``, then the frozen backbone on the best available device and its autocast dtype."""
    config = setup(args, extra_defaults)
    device = distributed.device()
    model = build_model_for_eval(config, args.pretrained_weights, device)
    return model, get_autocast_dtype(config, device)
