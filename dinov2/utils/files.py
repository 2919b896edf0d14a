"""Reading model, checkpoint and cache files as data: ``torch.load(..., weights_only=True)`` unless trusted.

A ``.pth`` file is a pickle, and a pickle can run code when it is loaded. Every file a user passes
is therefore read with PyTorch's restricted unpickler, which only rebuilds tensors, numbers,
strings, lists and dicts. A file that needs more is refused with :class:`UntrustedFileError`, unless
the process was started with ``--trust-pickle`` (:func:`set_trust_pickle`).
"""

import logging
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from dinov2.utils.errors import InputError, InputFileNotFoundError

logger = logging.getLogger("dinov2")

_RESTRICTED_FAILURE = "Weights only load failed"
_trust_pickle = False


class UntrustedFileError(InputError):
    """A file holds pickled objects beyond plain data and was not loaded."""


def set_trust_pickle(enabled: bool) -> None:
    """Allow (``--trust-pickle``) or forbid (the default) full unpickling of files that need it."""
    global _trust_pickle
    _trust_pickle = enabled
    if enabled:
        logger.warning(
            "--trust-pickle: files that hold more than plain tensors and containers are fully unpickled, "
            "which runs any code they carry. Use it only for files from a source you trust."
        )


def load_torch_file(path: str | Path, what: str = "file") -> Any:
    """The contents of the PyTorch file ``path`` on the CPU, read as data.

    Args:
        path: the file.
        what: what the file is, for the error messages (e.g. ``"head file"``).

    Raises:
        InputFileNotFoundError: ``path`` does not exist.
        UntrustedFileError: the file needs full unpickling and ``--trust-pickle`` was not given.
        InputError: the file is no PyTorch file (truncated or of another kind).
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileNotFoundError(f"{what} {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        refused = _refused_global(error)
        if _RESTRICTED_FAILURE not in str(error) or (refused is None and not _trust_pickle):
            raise InputError(f"{what} {path} is not a PyTorch file that can be read: {_reason(error)}") from None
        if not _trust_pickle:
            raise UntrustedFileError(
                f"{what} {path} holds pickled objects beyond tensors, numbers, strings, lists and dicts "
                f"({refused}); loading it could run code it carries, so it was refused. "
                "Re-save it as a plain state dict, or pass --trust-pickle if you trust its source."
            ) from None
    except (RuntimeError, EOFError, OSError) as error:
        raise InputError(f"{what} {path} is not a PyTorch file that can be read: {_reason(error)}") from None
    logger.warning("Fully unpickling %s %s (--trust-pickle)", what, path)
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # a corrupt pickle can fail in any way
        raise InputError(f"{what} {path} is not a PyTorch file that can be read: {_reason(error)}") from None


def _reason(error: BaseException) -> str:
    """The line of PyTorch's message that says what went wrong."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    unpickler = next((line for line in lines if line.startswith(("WeightsUnpickler", "Unsupported"))), None)
    return (unpickler or (lines[0] if lines else type(error).__name__)).removeprefix("WeightsUnpickler error: ")


def _refused_global(error: BaseException) -> str | None:
    """What the restricted unpickler refused to import (``GLOBAL module.name``), or None for other failures."""
    match = re.search(r"Unsupported global: (GLOBAL \S+)", str(error))
    return match.group(1) if match else None
