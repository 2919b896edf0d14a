"""Reading model, checkpoint and cache files as data: ``torch.load(..., weights_only=True)`` unless trusted.

A ``.pth`` file is a pickle, and a pickle can run code when it is loaded. Every file a user passes
is therefore read with PyTorch's restricted unpickler, which only rebuilds tensors, numbers,
strings, lists and dicts. A file that needs more is refused with :class:`UntrustedFileError`, unless
the process was started with ``--trust-pickle`` (:func:`set_trust_pickle`).
"""

import logging
import pickle
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
        if _RESTRICTED_FAILURE not in str(error):
            raise InputError(f"{what} {path} is not a PyTorch file that can be read: {_first_line(error)}") from None
        if not _trust_pickle:
            raise UntrustedFileError(
                f"{what} {path} holds pickled objects beyond tensors, numbers, strings, lists and dicts "
                f"({_refused_global(error)}); loading it could run code it carries, so it was refused. "
                "Re-save it as a plain state dict, or pass --trust-pickle if you trust its source."
            ) from None
    except (RuntimeError, EOFError, OSError) as error:
        raise InputError(f"{what} {path} is not a PyTorch file that can be read: {_first_line(error)}") from None
    logger.warning("Fully unpickling %s %s (--trust-pickle)", what, path)
    return torch.load(path, map_location="cpu", weights_only=False)


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def _refused_global(error: BaseException) -> str:
    """The part of PyTorch's message that names what the restricted unpickler refused."""
    for line in str(error).splitlines():
        if "Unsupported global" in line or "Unsupported operand" in line or "Unsupported class" in line:
            return line.strip().removeprefix("WeightsUnpickler error: ")
    return _first_line(error)
