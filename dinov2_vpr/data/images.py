"""Collect image paths from a folder or from a text file that lists them."""

import re
from pathlib import Path

from dinov2.utils.errors import InputError, InputFileNotFoundError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp"})

_DIGITS = re.compile(r"(\d+)")


def _natural_part_key(part: str) -> tuple:
    """Key that orders "img2" before "img10": digit runs compare as numbers, text case-insensitively."""
    pieces = _DIGITS.split(part)
    return tuple(int(piece) if index % 2 else piece.casefold() for index, piece in enumerate(pieces))


def _natural_path_key(relative: Path) -> tuple:
    return tuple(_natural_part_key(part) for part in relative.parts), relative.as_posix()


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _images_in_folder(folder: Path) -> list[Path]:
    relatives = [path.relative_to(folder) for path in folder.rglob("*") if path.is_file() and _is_image(path)]
    if not relatives:
        raise InputFileNotFoundError(
            f"No images found in folder {folder} (searched recursively for {', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    return [folder / relative for relative in sorted(relatives, key=_natural_path_key)]


def _images_in_list(list_file: Path) -> list[Path]:
    images = []
    for line_number, line in enumerate(list_file.read_text(encoding="utf-8").splitlines(), start=1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        path = Path(entry) if Path(entry).is_absolute() else list_file.parent / entry
        if not _is_image(path):
            raise InputError(
                f"{list_file}:{line_number}: {entry!r} does not have an image extension "
                f"({', '.join(sorted(IMAGE_EXTENSIONS))})"
            )
        if not path.is_file():
            raise InputFileNotFoundError(
                f"{list_file}:{line_number}: image {path} does not exist "
                f"(relative paths are read from the list file's folder {list_file.parent})"
            )
        images.append(path)
    if not images:
        raise InputError(f"Image list {list_file} names no images (only blank lines or # comments)")
    return images


def list_images(source: str | Path) -> list[Path]:
    """Image paths from a folder or from a text file listing them.

    Args:
        source: a folder, searched recursively for files with an extension in ``IMAGE_EXTENSIONS``
            (returned in natural order of their paths relative to the folder: ``2.jpg`` before
            ``10.jpg``), or a text file with one image path a line (relative to the list file's
            folder, or absolute), where blank lines and lines starting with ``#`` are ignored;
            a list keeps its order.

    Returns:
        The image paths (joined to ``source`` for a folder, to the list file's folder for a list).

    Raises:
        InputFileNotFoundError: ``source`` does not exist, the folder holds no image, or a listed image is missing.
        InputError: the list names no image, or names a file without an image extension.
    """
    source = Path(source)
    if source.is_dir():
        return _images_in_folder(source)
    if source.is_file():
        return _images_in_list(source)
    raise InputFileNotFoundError(
        f"Image source {source} does not exist; pass a folder of images or a text file listing them"
    )
