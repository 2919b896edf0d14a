"""The DINOv2 default config and the eval configs of the released backbones."""

import pathlib

from omegaconf import DictConfig, OmegaConf

CONFIG_DIR = pathlib.Path(__file__).parent.resolve()


def load_config(name: str) -> DictConfig:
    """Load ``<name>.yaml`` from this folder (e.g. ``"eval/vitl14_pretrain"``)."""
    return OmegaConf.load(CONFIG_DIR / f"{name}.yaml")


dinov2_default_config = load_config("ssl_default_config")


def load_and_merge_config(name: str) -> DictConfig:
    """The default config with ``<name>.yaml`` merged over it."""
    return OmegaConf.merge(OmegaConf.create(dinov2_default_config), load_config(name))
