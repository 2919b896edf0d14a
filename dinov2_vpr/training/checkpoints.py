"""Checkpoints of a training run: atomic files, written by the main rank, with a ``last_checkpoint`` pointer.

fvcore's Checkpointer keeps the same layout but writes in place; here a file is either complete
or absent, so an interruption during a save never leaves a checkpoint that cannot be read.
"""

import logging
from pathlib import Path
from typing import Any

from dinov2 import distributed
from dinov2.utils.errors import InputFileNotFoundError
from dinov2.utils.files import load_torch_file
from dinov2_vpr.io import atomic_save_torch, atomic_write_text

logger = logging.getLogger("dinov2")

LAST_POINTER = "last_checkpoint"
TAGGED_PREFIX = "epoch_"


class Checkpointer:
    """Saves and finds the checkpoints in ``folder``."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def save(self, name: str, state: dict[str, Any], tag_last: bool = True, keep_last: int = 0) -> Path | None:
        """Write ``<name>.pth`` (main rank only) and, with ``tag_last``, point ``last_checkpoint`` at it.

        With ``keep_last > 0``, older tagged checkpoints beyond the newest ``keep_last`` are removed.
        """
        if not distributed.is_main_process():
            return None
        path = self.folder / f"{name}.pth"
        atomic_save_torch(state, path)
        if tag_last:
            atomic_write_text(self.folder / LAST_POINTER, path.name)
            self._tagged().append(path.name)
            while keep_last and len(self._tagged()) > keep_last:
                (self.folder / self._tagged().pop(0)).unlink(missing_ok=True)
        logger.info("Saved checkpoint %s", path)
        return path

    def _tagged(self) -> list[str]:
        if not hasattr(self, "_tagged_names"):
            self._tagged_names = sorted(p.name for p in self.folder.glob(f"{TAGGED_PREFIX}*.pth"))
        return self._tagged_names

    def last_path(self) -> Path | None:
        """The checkpoint ``last_checkpoint`` names, or None before the first save."""
        pointer = self.folder / LAST_POINTER
        if not pointer.exists():
            return None
        path = self.folder / pointer.read_text().strip()
        if not path.exists():
            raise InputFileNotFoundError(
                f"{pointer} names {path.name}, which does not exist: remove {pointer} to start afresh"
            )
        return path

    def load_last(self) -> dict[str, Any] | None:
        """The last checkpoint's state, or None."""
        path = self.last_path()
        return None if path is None else load_checkpoint(path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint saved by :class:`Checkpointer` (on the CPU, as data: see :func:`load_torch_file`)."""
    return load_torch_file(path, what="checkpoint")
