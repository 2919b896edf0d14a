"""Config merging: default <- config file <- ``key=value`` options, in OmegaConf struct mode."""

import argparse
import difflib
import logging
import os
from collections.abc import Iterable

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

from dinov2.configs import dinov2_default_config
from dinov2.utils.errors import InputError, InputFileNotFoundError
from dinov2.utils.files import set_trust_pickle

logger = logging.getLogger("dinov2")


def _all_keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    keys = []
    for key, value in cfg.items():
        full = f"{prefix}{key}"
        keys.append(full)
        if isinstance(value, DictConfig):
            keys.extend(_all_keys(value, f"{full}."))
    return keys


def _merge_checked(base: DictConfig, update: DictConfig, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, update)
    except (ConfigKeyError, ConfigAttributeError) as error:
        key = error.full_key or str(error.key)
        close = difflib.get_close_matches(key, _all_keys(base), n=3)
        suggestion = f" Did you mean {', '.join(close)}?" if close else ""
        raise InputError(
            f"Unknown config key {key!r} in {source}.{suggestion} Valid keys are in the default configs."
        ) from None
    except ValidationError as error:
        raise InputError(
            f"Config key {error.full_key!r} in {source}: {error.msg}; give a value of the default's type"
        ) from None


def build_config(
    config_file: str | None = None,
    opts: Iterable[str] = (),
    extra_defaults: Iterable[DictConfig] = (),
) -> DictConfig:
    """Merge the DINOv2 default, ``extra_defaults`` (a task's own defaults), the config file and ``opts``.

    Every layer after the defaults may only set keys that exist; an unknown key raises ``ValueError``
    naming it.
    """
    cfg = OmegaConf.create(dinov2_default_config)
    for defaults in extra_defaults:
        cfg = OmegaConf.merge(cfg, defaults)
    OmegaConf.set_struct(cfg, True)
    if config_file:
        if not os.path.isfile(config_file):
            raise InputFileNotFoundError(f"Config file not found: {config_file!r}")
        cfg = _merge_checked(cfg, OmegaConf.load(config_file), f"config file {config_file}")
    opts = list(opts)
    malformed = [opt for opt in opts if "=" not in opt]
    if malformed:
        raise InputError(f"Options must be key=value, got {malformed}")
    return _merge_checked(cfg, OmegaConf.from_dotlist(opts), "--opts")


def write_config(cfg: DictConfig, output_dir: str, name: str = "config.yaml") -> str:
    """Write the resolved config to ``output_dir/name`` atomically; returns the path."""
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, name)
    tmp_path = f"{path}.tmp{os.getpid()}"
    with open(tmp_path, "w") as handle:
        handle.write(OmegaConf.to_yaml(cfg, resolve=True))
    os.replace(tmp_path, path)
    return path


def setup(args: argparse.Namespace, extra_defaults: Iterable[DictConfig] = ()) -> DictConfig:
    """Build the config from ``args.config_file`` and ``args.opts``, record ``train.output_dir``, write it.

    Also sets, for this process, whether model files may be fully unpickled (``args.trust_pickle``).
    """
    set_trust_pickle(args.trust_pickle)
    args.output_dir = os.path.abspath(args.output_dir)
    opts = list(args.opts or []) + [f"train.output_dir={args.output_dir}"]
    cfg = build_config(args.config_file, opts, extra_defaults)
    write_config(cfg, args.output_dir)
    return cfg
