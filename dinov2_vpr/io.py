"""Atomic file writes: the project's one way to write a file that readers never see half-written."""

import hashlib
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

_MODES = ("w", "wb")


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX only; a no-op where folders cannot be opened)."""
    try:
        folder_fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(folder_fd)
    except OSError:
        pass
    finally:
        os.close(folder_fd)


@contextmanager
def atomic_write(path: str | Path, mode: str = "w", encoding: str = "utf-8") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success fsync it and rename it over ``path``.

    Readers see either the old file or the complete new one, never a partial write. On an
    exception the temporary file is removed and ``path`` is left untouched. Missing parent
    folders are created. Text mode writes ``\\n`` line endings as given (no translation).

    Args:
        path: the file to write.
        mode: ``"w"`` (text) or ``"wb"`` (binary).
        encoding: text encoding for ``"w"``.

    Yields:
        The open temporary file.
    """
    if mode not in _MODES:
        raise ValueError(f"atomic_write mode must be one of {_MODES}, got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    # os.open with 0o666 lets the umask decide the permissions, as for a plain open().
    file_descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        if mode == "wb":
            handle = os.fdopen(file_descriptor, "wb")
        else:
            handle = os.fdopen(file_descriptor, "w", encoding=encoding, newline="")
        with handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`)."""
    with atomic_write(path, "w", encoding=encoding) as handle:
        handle.write(text)


def atomic_save_torch(obj: Any, path: str | Path) -> None:
    """``torch.save(obj)`` to ``path`` atomically (see :func:`atomic_write`)."""
    import torch  # imported here so that modules writing plain files do not load torch

    with atomic_write(path, "wb") as handle:
        torch.save(obj, handle)


def file_digest(path: str | Path) -> str:
    """The SHA-256 of the file's content (hex): the same file under any name or time gives the same digest."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
