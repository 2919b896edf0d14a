"""The VPR config: the DINOv2 config with the ``vpr.*`` defaults of ``configs/vpr_default.yaml``.

A method's training recipe (``configs/<method>.yaml``, ``--method`` of the training command) is merged
over these defaults, and a trained place model (``vpr.model.trained``, ``--model``) brings the
backbone, aggregator and preprocessing it was trained with; the config file and the options come after.
"""

import argparse
from importlib.resources import files

from omegaconf import DictConfig, OmegaConf

from dinov2.utils.config import build_config, setup
from dinov2.utils.errors import InputError


def vpr_defaults() -> DictConfig:
    """The ``vpr.*`` defaults shipped in ``configs/vpr_default.yaml``."""
    return OmegaConf.load(files("dinov2_vpr.configs").joinpath("vpr_default.yaml"))


def method_recipe(method: str) -> DictConfig:
    """The ``vpr.*`` defaults with the training recipe ``configs/<method>.yaml`` merged in (known keys only).

    Raises:
        InputError: no recipe for ``method``.
    """
    recipe = files("dinov2_vpr.configs").joinpath(f"{method}.yaml")
    if not recipe.is_file():
        raise InputError(f"No training recipe for method {method!r} (configs/{method}.yaml)")
    defaults = vpr_defaults()
    OmegaConf.set_struct(defaults, True)
    return OmegaConf.merge(defaults, OmegaConf.load(recipe))


def _layers(config_file: str | None, opts: list[str] | tuple, recipe: str | None) -> list[DictConfig]:
    """The default layers: the VPR defaults or a recipe, then the trained model's settings if the config names one."""
    from dinov2_vpr.models.build import trained_model_config  # the models import this module

    layers = [method_recipe(recipe) if recipe else vpr_defaults()]
    trained = build_config(config_file, opts, layers).vpr.model.trained
    return [*layers, trained_model_config(trained)] if trained else layers


def build_vpr_config(
    config_file: str | None = None, opts: list[str] | tuple = (), recipe: str | None = None
) -> DictConfig:
    """DINOv2 default <- VPR default (or ``recipe``) <- trained model <- ``config_file`` <- ``opts`` (unknown keys rejected)."""
    return build_config(config_file, opts, extra_defaults=_layers(config_file, opts, recipe))


def setup_vpr_config(args: argparse.Namespace, recipe: str | None = None) -> DictConfig:
    """As :func:`dinov2.utils.config.setup` with the VPR layers of :func:`build_vpr_config`: writes ``<output-dir>/config.yaml``."""
    return setup(args, extra_defaults=_layers(args.config_file, list(args.opts or []), recipe))
