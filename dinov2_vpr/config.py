"""The VPR config: the DINOv2 config with the ``vpr.*`` defaults of ``configs/vpr_default.yaml``."""

import argparse
from importlib.resources import files

from omegaconf import DictConfig, OmegaConf

from dinov2.utils.config import build_config, setup


def vpr_defaults() -> DictConfig:
    """The ``vpr.*`` defaults shipped in ``configs/vpr_default.yaml``."""
    return OmegaConf.load(files("dinov2_vpr.configs").joinpath("vpr_default.yaml"))


def build_vpr_config(config_file: str | None = None, opts: list[str] | tuple = ()) -> DictConfig:
    """DINOv2 default <- VPR default <- ``config_file`` <- ``opts`` (unknown keys rejected)."""
    return build_config(config_file, opts, extra_defaults=[vpr_defaults()])


def setup_vpr_config(args: argparse.Namespace) -> DictConfig:
    """As :func:`dinov2.utils.config.setup` with the VPR defaults: writes ``<output-dir>/config.yaml``."""
    return setup(args, extra_defaults=[vpr_defaults()])
