"""Positions of images, shared by retrieval and loop detection: UTM coordinates in VPR-benchmark file names,
``<frame>@<x>@<y>`` names, or a CSV of positions."""

import csv
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dinov2.utils.errors import InputError

UTM_NAME_PATTERN = "@<utm_east>@<utm_north>@<utm_zone_number>@<utm_zone_letter>@...@.jpg"


def parse_utm(path: str | Path) -> tuple[float, float]:
    """UTM (east, north) in metres from a VPR-benchmark file name.

    The common VPR datasets downloader (Pitts30k, Tokyo 24/7, MSLS, SF-XL, St Lucia) names each image
    ``@<utm_east>@<utm_north>@<utm_zone_number>@<utm_zone_letter>@<latitude>@<longitude>@...@.jpg``.

    Raises:
        ValueError: the file name does not follow that pattern.
    """
    name = Path(path).name
    fields = name.split("@")
    if not name.startswith("@") or len(fields) < 4:
        raise InputError(f"{path}: file name does not carry UTM coordinates; expected {UTM_NAME_PATTERN}")
    try:
        east, north = float(fields[1]), float(fields[2])
    except ValueError:
        raise InputError(
            f"{path}: UTM east/north {fields[1]!r}, {fields[2]!r} are not numbers; expected {UTM_NAME_PATTERN}"
        ) from None
    if not (math.isfinite(east) and math.isfinite(north)):
        raise InputError(f"{path}: UTM east/north must be finite numbers; expected {UTM_NAME_PATTERN}")
    return east, north


def utm_positions(paths: Sequence[str | Path]) -> np.ndarray:
    """``(len(paths), 2)`` float64 array of UTM (east, north) parsed from each file name with `parse_utm`."""
    return np.array([parse_utm(path) for path in paths], dtype=np.float64).reshape(len(paths), 2)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _column_indices(header: list[str], path: Path) -> tuple[int, int, int]:
    columns = [column.strip().lower() for column in header]
    missing = [column for column in ("name", "x", "y") if column not in columns]
    if missing:
        raise InputError(f"{path}:1: header {header} lacks column(s) {missing}; expected columns name,x,y")
    return columns.index("name"), columns.index("x"), columns.index("y")


def read_positions_csv(path: str | Path, names: Sequence[str | Path]) -> np.ndarray:
    """Positions of the given frames from a CSV with columns ``name,x,y``.

    A header line is allowed (detected when its x/y fields are not numbers); with a header the
    columns are found by name (extra columns are ignored), without one they are the first three.

    Args:
        path: the CSV file.
        names: frame names exactly as written in the CSV's name column (``str()`` is applied).

    Returns:
        ``(len(names), 2)`` float64 array of (x, y), in the order of ``names``.

    Raises:
        ValueError: a malformed or duplicated row, or names without a row.
    """
    path = Path(path)
    with path.open(newline="", encoding="utf-8") as file:
        rows = [(line_number, row) for line_number, row in enumerate(csv.reader(file), start=1) if any(row)]
    if not rows:
        raise InputError(f"{path}: empty positions file; expected rows name,x,y")
    name_column, x_column, y_column = 0, 1, 2
    first_row = rows[0][1]
    if len(first_row) < 3 or not (_is_number(first_row[1]) and _is_number(first_row[2])):
        name_column, x_column, y_column = _column_indices(first_row, path)
        rows = rows[1:]
    needed = max(name_column, x_column, y_column) + 1
    positions: dict[str, tuple[float, float]] = {}
    for line_number, row in rows:
        if len(row) < needed:
            raise InputError(f"{path}:{line_number}: expected at least {needed} fields (name,x,y), got {row}")
        name = row[name_column].strip()
        try:
            xy = (float(row[x_column]), float(row[y_column]))
        except ValueError:
            raise InputError(f"{path}:{line_number}: x/y of {name!r} are not numbers: {row}") from None
        if name in positions:
            raise InputError(f"{path}:{line_number}: frame {name!r} appears twice")
        positions[name] = xy
    missing = [str(name) for name in names if str(name) not in positions]
    if missing:
        raise InputError(
            f"{path}: no position for {len(missing)} of {len(names)} frame(s), e.g. {missing[:3]}; "
            "the name column must hold the frame names exactly"
        )
    return np.array([positions[str(name)] for name in names], dtype=np.float64).reshape(len(names), 2)


FRAME_NAME_PATTERN = "<frame>@<x>@<y>.<ext>"


def position_from_name(path: str | Path) -> tuple[float, float]:
    """(x, y) from a file name: the VPR benchmark's UTM pattern, or ``<frame>@<x>@<y>.<ext>``.

    Raises:
        InputError: the name follows neither pattern.
    """
    name = Path(path).name
    if name.startswith("@"):
        return parse_utm(name)
    fields = Path(name).stem.split("@")
    try:
        x, y = float(fields[1]), float(fields[2])
    except (IndexError, ValueError):
        raise InputError(
            f"{path}: file name carries no position; expected {FRAME_NAME_PATTERN} or {UTM_NAME_PATTERN}"
        ) from None
    if not (math.isfinite(x) and math.isfinite(y)):
        raise InputError(f"{path}: position ({x}, {y}) must be finite numbers")
    return x, y


def positions_from_names(paths: Sequence[str | Path]) -> np.ndarray:
    """``(len(paths), 2)`` float64 positions parsed with :func:`position_from_name`."""
    return np.array([position_from_name(path) for path in paths], dtype=np.float64).reshape(len(paths), 2)
