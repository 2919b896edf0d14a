"""Which descriptor a run computes: a trained head (its file and training config) or zero-shot pooling.

Shared by every command and API that turns images into descriptors (eval, extract, retrieval,
loops, export, :func:`dinov2_vpr.models.descriptor.load_place_model`), so that a head is always applied with
the backbone and preprocessing it was trained on.
"""

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from dinov2.utils.errors import InputError
from dinov2_vpr.models.files import HEAD_FILE, load_head_file

# Settings a head was trained with that must hold for its inputs to mean the same thing.
HEAD_BOUND_KEYS = ("student", "crops.global_crops_size", "vpr.data.image_size")
# Zero-shot descriptors: the pooling name and the backbone features it reads (see features.pooling.HEAD_INPUTS).
ZERO_SHOT_INPUTS = {"cls": "cls", "gem": "gem"}


def head_file_path(path: str | Path) -> Path:
    """``path`` itself, or ``<path>/head.pth`` when ``path`` is a training output folder."""
    path = Path(path)
    return path / HEAD_FILE if path.is_dir() else path


def _plain(value):
    return OmegaConf.to_container(OmegaConf.create({"v": value}))["v"]


def apply_head_config(cfg: DictConfig, head_state: dict, head_path: str | Path) -> None:
    """Take ``vpr.head`` from the head file; fail if the backbone or preprocessing differ from its training."""
    trained = OmegaConf.create(head_state["config"])
    for key in HEAD_BOUND_KEYS:
        now, then = OmegaConf.select(cfg, key), OmegaConf.select(trained, key)
        if _plain(now) != _plain(then):
            raise InputError(
                f"{key} differs from the training of {head_path}: {then} there, {now} here; "
                "use the config file and options the head was trained with"
            )
    cfg.vpr.head = trained.vpr.head


def configure_descriptor(cfg: DictConfig, head: str | Path | None, zero_shot: str | None = None) -> dict | None:
    """Set ``cfg.vpr.head`` for a trained head or for zero-shot descriptors; return the head file's state.

    With ``vpr.model.method`` (``--method``) or ``vpr.model.trained`` (``--model``) set, that model describes
    the images: nothing to set.

    Args:
        cfg: the run's config (changed in place).
        head: a ``head.pth`` or a training output folder; None for zero-shot descriptors.
        zero_shot: without a head, ``"cls"`` (the class token, the default) or ``"gem"`` (GeM over
            the patch tokens); must be None with a head.

    Returns:
        The head file's contents (``{"head", "threshold", "config", ...}``), or None for zero-shot.

    Raises:
        InputError: a head or a zero-shot pooling with a method, both a head and a zero-shot pooling, an unknown pooling, or a head trained
            with another backbone or preprocessing.
    """
    if head is not None and zero_shot is not None:
        raise InputError(f"Give either a trained head ({head}) or a zero-shot pooling ({zero_shot!r}), not both")
    own = cfg.vpr.model.method or ("trained" if cfg.vpr.model.trained else "")
    if own and (head is not None or zero_shot is not None):
        raise InputError(f"The {own} model makes its own descriptors: give it without --head or --zero-shot")
    if own:
        return None
    if head is not None:
        path = head_file_path(head)
        head_state = load_head_file(path)
        apply_head_config(cfg, head_state, path)
        return head_state
    pooling = zero_shot or "cls"
    if pooling not in ZERO_SHOT_INPUTS:
        raise InputError(f"Zero-shot pooling {pooling!r} is unknown; choose one of {sorted(ZERO_SHOT_INPUTS)}")
    cfg.vpr.head.input = ZERO_SHOT_INPUTS[pooling]
    return None


def model_info(cfg: DictConfig, head: str | Path | None, zero_shot: str | None, pretrained_weights: str | None) -> dict:
    """What produced a set of descriptors, for the JSON written beside them."""
    method = cfg.vpr.model.method
    own = method or cfg.vpr.model.trained
    return {
        "method": method,
        "head": str(head_file_path(head).resolve()) if head is not None else None,
        "zero_shot": None if head is not None or own else (zero_shot or "cls"),
        "head_name": cfg.vpr.head.name if head is not None else None,
        "head_input": None if method else cfg.vpr.head.input,
        "pretrained_weights": str(Path(pretrained_weights).resolve()) if pretrained_weights else None,
        "arch": cfg.student.arch,
        "patch_size": cfg.student.patch_size,
        "image_size": list(cfg.vpr.data.image_size),
    }
