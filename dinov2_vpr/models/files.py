"""Files of trained heads: ``head.pth`` (the head, its threshold and the config it was trained with), read as data."""

from pathlib import Path

from dinov2.utils.errors import InputError
from dinov2.utils.files import load_torch_file

HEAD_FILE = "head.pth"


def load_head_file(path: str | Path) -> dict:
    """A saved head (``head.pth``) or a training checkpoint, as ``{"head": state, ...}``.

    Raises:
        InputError: the file is missing, unreadable, refused (pickled code) or holds no head.
    """
    state = load_torch_file(path, what="head file")
    if not isinstance(state, dict) or "head" not in state:
        found = sorted(state)[:8] if isinstance(state, dict) else type(state).__name__
        raise InputError(f"{path} holds no head (found {found}); pass a head.pth written by training")
    return state
