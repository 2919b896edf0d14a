"""Place datasets for P x K training: GSV-Cities dataframes or one folder per place, checked before use.

GSV-Cities layout::

    root/Dataframes/<City>.csv   columns place_id, city_id, year, month, northdeg, lat, lon, panoid
    root/Images/<city_id>/<city_id>_<place_id:07d>_<year:04d>_<month:02d>_<northdeg:03d>_<lat>_<lon>_<panoid>.jpg

where ``lat`` and ``lon`` are Python ``str()`` of the floats. Folder layout: ``root/<place>/<image>.jpg``.
"""

import csv
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

from dinov2.utils.errors import InputError, InputFileNotFoundError
from dinov2_vpr.data.images import IMAGE_EXTENSIONS
from dinov2_vpr.data.problems import ProblemListError, image_problem

logger = logging.getLogger("dinov2")

GSV_COLUMNS = ("place_id", "city_id", "year", "month", "northdeg", "lat", "lon", "panoid")


@dataclass(frozen=True)
class Places:
    """The usable images of a place dataset, grouped by place.

    Attributes:
        images: image paths, the images of each place consecutive.
        labels: the place label (index into ``names``) of each image.
        names: each place's name: ``<City>/<place_id>`` (GSV-Cities) or the folder name.
        layout: ``"gsv"`` or ``"folders"``.
        skipped: with ``skip_invalid``, how many ``rows``, ``images`` and ``places`` were skipped.
        problems: the problems found (skipped with ``skip_invalid``), as ``file:line: what`` or ``path: what``.
    """

    images: list[Path]
    labels: list[int]
    names: list[str]
    layout: str
    skipped: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


class PlaceDatasetError(ProblemListError):
    """Invalid rows, images or places of a place dataset; ``problems`` holds one message each."""

    subject = "the place dataset"
    remedy = "Fix these rows, images or places, or set vpr.data.skip_invalid=true to skip them."


def detect_layout(root: str | Path) -> str:
    """``"gsv"`` when ``root`` has a ``Dataframes`` folder, else ``"folders"``.

    Raises:
        InputFileNotFoundError: ``root`` is not a folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputFileNotFoundError(f"Place dataset {root} does not exist or is not a folder")
    return "gsv" if (root / "Dataframes").is_dir() else "folders"


def gsv_image_name(row: dict) -> str:
    """The GSV-Cities file name of a parsed dataframe row (see :func:`parse_gsv_row`)."""
    return (
        f"{row['city_id']}_{row['place_id']:07d}_{row['year']:04d}_{row['month']:02d}_{row['northdeg']:03d}_"
        f"{row['lat']}_{row['lon']}_{row['panoid']}.jpg"
    )


def _integer(text: str, low: int, high: int) -> int:
    value = int(text)
    if not low <= value <= high:
        raise ValueError
    return value


def _coordinate(text: str, limit: float) -> str:
    value = float(text)
    if not math.isfinite(value) or abs(value) > limit:
        raise ValueError
    return str(value)


def _name(text: str) -> str:
    if not text or any(char in text for char in "/\\") or text in (".", ".."):
        raise ValueError
    return text


# Column -> (parser of the stripped text, what a valid value is).
_PARSERS = {
    "place_id": (lambda text: _integer(text, 0, 9_999_999), "an integer from 0 to 9999999"),
    "city_id": (_name, "a folder name: not empty, no '/' or '\\'"),
    "year": (lambda text: _integer(text, 0, 9999), "an integer from 0 to 9999"),
    "month": (lambda text: _integer(text, 1, 12), "an integer from 1 to 12"),
    "northdeg": (lambda text: _integer(text, 0, 360), "an integer from 0 to 360"),
    "lat": (lambda text: _coordinate(text, 90.0), "a latitude from -90 to 90"),
    "lon": (lambda text: _coordinate(text, 180.0), "a longitude from -180 to 180"),
    "panoid": (_name, "a non-empty id without '/' or '\\'"),
}


def parse_gsv_row(values: dict[str, str]) -> dict:
    """Typed values of one dataframe row (extra columns ignored); ValueError names each bad column."""
    row, bad = {}, []
    for column, (parse, expected) in _PARSERS.items():
        text = (values.get(column) or "").strip()
        try:
            row[column] = parse(text)
        except ValueError:
            bad.append(f"bad {column} {text!r} (expected {expected})")
    if bad:
        raise ValueError("; ".join(bad))
    return row


class _ImageChecker:
    """Checks each distinct image once (PIL opens it and reads its size)."""

    def __init__(self) -> None:
        self._seen: dict[Path, str | None] = {}

    def __call__(self, path: Path) -> str | None:
        if path not in self._seen:
            self._seen[path] = image_problem(path)
        return self._seen[path]


# A problem message with its sort key (file, line): problems are reported in file and line order.
_Problem = tuple[tuple[str, int], str]
# A place as read: its name, the file that lists it, and its images as (path, sort key, problem message or None).
_Place = tuple[str, str, list[tuple[Path, tuple[str, int], str | None]]]
_AFTER_ROWS = 1 << 62  # sorts a place's problem after its file's rows


def _read_gsv(root: Path, check: _ImageChecker) -> tuple[list[_Place], list[_Problem]]:
    """The places of every dataframe and the problems of their headers and rows."""
    frames = sorted((root / "Dataframes").glob("*.csv"))
    if not frames:
        raise InputFileNotFoundError(f"No dataframes (*.csv) in {root / 'Dataframes'}: expected one <City>.csv a city")
    if not (root / "Images").is_dir():
        raise InputFileNotFoundError(f"GSV-Cities dataset {root} has Dataframes/ but no Images/ folder")
    places: dict[tuple[str, int], list[tuple[Path, tuple[str, int], str | None]]] = {}
    problems: list[_Problem] = []
    for frame in frames:
        source = str(frame)
        try:
            with open(frame, newline="", encoding="utf-8-sig") as handle:
                reader = csv.DictReader(handle)
                rows = list(reader)
        except (csv.Error, UnicodeDecodeError) as error:
            problems.append(((source, 1), f"{source}: not a readable CSV file ({error})"))
            continue
        missing = [column for column in GSV_COLUMNS if column not in (reader.fieldnames or [])]
        if missing:
            problems.append(
                ((source, 1), f"{source}:1: missing column(s) {', '.join(missing)}; need {', '.join(GSV_COLUMNS)}")
            )
            continue
        first_line: dict[Path, int] = {}
        for line, values in enumerate(rows, start=2):
            try:
                row = parse_gsv_row(values)
            except ValueError as error:
                problems.append(((source, line), f"{source}:{line}: {error}"))
                continue
            image = root / "Images" / row["city_id"] / gsv_image_name(row)
            if image in first_line:
                problems.append(((source, line), f"{source}:{line}: same image as line {first_line[image]}: {image}"))
                continue
            first_line[image] = line
            problem = check(image)
            places.setdefault((frame.stem, row["place_id"]), []).append(
                (image, (source, line), None if problem is None else f"{source}:{line}: image {problem}")
            )
    read = [
        (f"{city}/{place_id}", str(root / "Dataframes" / f"{city}.csv"), images)
        for (city, place_id), images in sorted(places.items())
    ]
    return read, problems


def _read_folders(root: Path, check: _ImageChecker) -> list[_Place]:
    """One place per sub-folder of ``root``, its images in name order."""
    folders = sorted(path for path in root.iterdir() if path.is_dir())
    if not folders:
        raise InputFileNotFoundError(
            f"{root} has neither Dataframes/ (GSV-Cities) nor sub-folders (one folder of images per place)"
        )
    places = []
    for folder in folders:
        images = sorted(path for path in folder.iterdir() if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS)
        entries = []
        for index, image in enumerate(images):
            problem = check(image)
            entries.append((image, (str(folder), index), None if problem is None else f"{image}: {problem}"))
        places.append((folder.name, str(folder), entries))
    return places


def read_places(root: str | Path, images_per_place: int, skip_invalid: bool = False) -> Places:
    """Read a place dataset (layout detected) and check every row, image and place before any work.

    Every distinct image is checked once (PIL opens it and reads its size). A place is usable with
    at least ``images_per_place`` usable images. Place labels are consecutive over all cities, so
    that the place ids of different cities never collide.

    Args:
        root: the dataset folder (GSV-Cities or one folder per place).
        images_per_place: K, the images of a place in a batch.
        skip_invalid: skip bad rows, images and too small places instead of raising; ``skipped``
            counts them (``rows``: bad rows, an unreadable file or one missing a column counting once).

    Raises:
        PlaceDatasetError: there are problems and ``skip_invalid`` is false.
        InputError: no usable place is left.
    """
    if images_per_place < 1:
        raise InputError(f"images_per_place must be at least 1, got {images_per_place}")
    root = Path(root)
    layout, check = detect_layout(root), _ImageChecker()
    gsv = layout == "gsv"
    read, problems = _read_gsv(root, check) if gsv else (_read_folders(root, check), [])
    skipped = {"rows": len(problems), "images": 0, "places": 0}
    images, labels, names = [], [], []
    for name, source, entries in read:
        usable = [image for image, _, problem in entries if problem is None]
        bad = [(key, problem) for _, key, problem in entries if problem is not None]
        problems += bad
        skipped["images"] += len(bad)
        if len(usable) < images_per_place:
            place = f"place {name.split('/')[1]}" if gsv else "place"
            problems.append(
                (
                    (source, _AFTER_ROWS),
                    f"{source}: {place} has {len(usable)} usable image(s), fewer than images_per_place={images_per_place}",
                )
            )
            skipped["places"] += 1
            continue
        labels += [len(names)] * len(usable)
        images += usable
        names.append(name)
    messages = [message for _, message in sorted(problems, key=lambda problem: problem[0])]
    if messages and not skip_invalid:
        raise PlaceDatasetError(messages)
    if messages:
        logger.warning(
            "Skipping invalid place data (vpr.data.skip_invalid=true): %s; %d place(s) of %d image(s) kept; first: %s",
            ", ".join(f"{count} {what}" for what, count in skipped.items()),
            len(names),
            len(images),
            messages[0],
        )
    if not names:
        raise InputError(
            f"No usable place in {root}: need places of at least {images_per_place} readable images"
            + (f"; first problem: {messages[0]}" if messages else "")
        )
    return Places(images, labels, names, layout, skipped, messages)
