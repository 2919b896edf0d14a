"""Procedural demo data: street scenes seen under changed light, colour and viewpoint.

Every place is a seeded street scene (sky and ground gradients, a road, textured buildings with
windows, trees, poles and signs). Consecutive place ids come in pairs (``PLACES_PER_STREET``) that
share the street's palette and half of its buildings: they look alike and serve as hard negatives.
A :class:`ViewChange` renders a place as another visit would see it. Nothing is downloaded.
"""

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from dinov2_vpr.data.pairs import write_pair_list, write_result_file
from dinov2_vpr.io import atomic_write, atomic_write_text

PLACES_PER_STREET = 2
# The scene is drawn larger than the view so that shifts, zoom-outs and rotations stay inside it.
_CANVAS_HEIGHT_FACTOR = 1.25
_CANVAS_WIDTH_FACTOR = 1.5
_BUILDINGS_PER_SCENE = 7
_JPEG_QUALITY = 90
# Defaults of the retrieval layout: a street in UTM zone 10S.
_UTM_ORIGIN = (543256.12, 4180123.45)
_UTM_ZONE = (10, "S")


@dataclass(frozen=True)
class ViewChange:
    """How a visit differs from the canonical view of a place (the defaults change nothing).

    Attributes:
        brightness: multiplier of the pixel values.
        gamma: exponent applied to values in [0, 1] (above 1 darkens the mid-tones).
        tint: per-channel (R, G, B) gains, a white-balance change.
        shift: horizontal viewpoint shift as a fraction of the image width.
        scale: zoom factor (above 1 is closer).
        rotation: camera roll in degrees.
        noise: standard deviation of Gaussian pixel noise, as a fraction of the value range.
        noise_seed: seed of that noise.
    """

    brightness: float = 1.0
    gamma: float = 1.0
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)
    shift: float = 0.0
    scale: float = 1.0
    rotation: float = 0.0
    noise: float = 0.0
    noise_seed: int = 0


def random_view(rng: np.random.Generator, strength: float = 0.5, night: bool = False) -> ViewChange:
    """A random view change.

    Args:
        rng: the random generator to draw from.
        strength: 0 (almost no change) to 1 (strong but recognisable change).
        night: make the view dark, blue-tinted and noisier.
    """
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    brightness = 1.0 + rng.uniform(-0.3, 0.3) * strength
    gamma = math.exp(rng.uniform(-0.3, 0.3) * strength)
    tint = 1.0 + rng.uniform(-0.15, 0.15, size=3) * strength
    noise = 0.005 + 0.02 * strength * rng.uniform()
    if night:
        brightness *= 0.45
        gamma *= 1.4
        tint = tint * np.array([0.85, 0.95, 1.2])
        noise += 0.03
    return ViewChange(
        brightness=float(brightness),
        gamma=float(gamma),
        tint=tuple(float(gain) for gain in tint),
        shift=float(rng.uniform(-0.15, 0.15) * strength),
        scale=float(1.0 + rng.uniform(-0.1, 0.1) * strength),
        rotation=float(rng.uniform(-4.0, 4.0) * strength),
        noise=float(noise),
        noise_seed=int(rng.integers(2**31)),
    )


def _canvas_size(size: tuple[int, int]) -> tuple[int, int]:
    """(height, width) of the scene canvas for views of ``size`` (height, width)."""
    return round(size[0] * _CANVAS_HEIGHT_FACTOR), round(size[1] * _CANVAS_WIDTH_FACTOR)


def _colour(rng: np.random.Generator, low: float, high: float) -> tuple[int, int, int]:
    return tuple(int(value) for value in rng.uniform(low, high, size=3))


def _building(rng: np.random.Generator) -> dict:
    """Building parameters in canvas fractions: position, size, colours, windows and roof."""
    return {
        "left": rng.uniform(-0.05, 0.95),
        "width": rng.uniform(0.07, 0.2),
        "height": rng.uniform(0.12, 0.45),
        "colour": _colour(rng, 50, 220),
        "window_colour": _colour(rng, 200, 250) if rng.uniform() < 0.5 else _colour(rng, 20, 70),
        "window_rows": int(rng.integers(2, 7)),
        "window_columns": int(rng.integers(2, 5)),
        "roof": bool(rng.uniform() < 0.4),
    }


def _draw_building(draw: ImageDraw.ImageDraw, building: dict, horizon: float, height: int, width: int) -> None:
    left = building["left"] * width
    right = left + building["width"] * width
    top = horizon - building["height"] * height
    bottom = horizon + 0.03 * height
    draw.rectangle((left, top, right, bottom), fill=building["colour"])
    if building["roof"]:
        draw.polygon(
            [(left, top), ((left + right) / 2, top - 0.3 * (right - left)), (right, top)],
            fill=tuple(value // 2 for value in building["colour"]),
        )
    rows, columns = building["window_rows"], building["window_columns"]
    cell_width, cell_height = (right - left) / columns, (bottom - top) / (rows + 1)
    for row in range(rows):
        for column in range(columns):
            x0, y0 = left + (column + 0.25) * cell_width, top + (row + 0.3) * cell_height
            draw.rectangle((x0, y0, x0 + 0.5 * cell_width, y0 + 0.5 * cell_height), fill=building["window_colour"])


def _draw_street_object(
    draw: ImageDraw.ImageDraw, rng: np.random.Generator, horizon: float, height: int, width: int
) -> None:
    """A tree, a lamp pole or a sign at a random place on the pavement."""
    x = rng.uniform(0.02, 0.98) * width
    base = horizon + rng.uniform(0.05, 0.2) * height
    kind = rng.integers(3)
    if kind == 0:  # tree
        radius = rng.uniform(0.04, 0.09) * width
        draw.rectangle((x - 0.01 * width, base - 2 * radius, x + 0.01 * width, base), fill=(90, 60, 30))
        draw.ellipse((x - radius, base - 3.5 * radius, x + radius, base - 1.5 * radius), fill=_colour(rng, 20, 140))
    elif kind == 1:  # lamp pole
        top = base - rng.uniform(0.3, 0.5) * height
        draw.rectangle((x - 0.006 * width, top, x + 0.006 * width, base), fill=(40, 40, 45))
        draw.ellipse((x - 0.02 * width, top - 0.02 * width, x + 0.02 * width, top + 0.02 * width), fill=(250, 240, 180))
    else:  # sign on a pole
        top = base - rng.uniform(0.15, 0.3) * height
        sign = rng.uniform(0.03, 0.06) * width
        draw.rectangle((x - 0.004 * width, top, x + 0.004 * width, base), fill=(70, 70, 70))
        bright = [(220, 30, 30), (30, 80, 220), (240, 200, 20), (20, 160, 60)][rng.integers(4)]
        draw.rectangle((x - sign, top - sign, x + sign, top + 0.6 * sign), fill=bright)


def _render_scene(place_id: int, canvas: tuple[int, int], seed: int) -> Image.Image:
    """The canonical scene of a place on a canvas of (height, width) pixels."""
    if place_id < 0:
        raise ValueError(f"place_id must be non-negative, got {place_id}")
    height, width = canvas
    street = np.random.default_rng([seed, 1, place_id // PLACES_PER_STREET])
    place = np.random.default_rng([seed, 2, place_id])
    horizon = street.uniform(0.5, 0.62) * height

    rows = np.arange(height, dtype=np.float32)[:, None, None]
    sky_top, sky_bottom = street.uniform(90, 200, size=3), street.uniform(170, 250, size=3)
    ground_far, ground_near = street.uniform(70, 160, size=3), street.uniform(40, 130, size=3)
    sky = sky_top + (sky_bottom - sky_top) * np.clip(rows / horizon, 0, 1)
    ground = ground_far + (ground_near - ground_far) * np.clip((rows - horizon) / (height - horizon), 0, 1)
    background = np.where(rows < horizon, sky, ground) * np.ones((1, width, 1), dtype=np.float32)
    image = Image.fromarray(background.astype(np.uint8))
    draw = ImageDraw.Draw(image)

    road_centre = street.uniform(0.35, 0.65) * width
    draw.polygon(
        [(road_centre - 0.03 * width, horizon), (road_centre + 0.03 * width, horizon), (width, height), (0, height)],
        fill=_colour(street, 50, 80),
    )
    for step in range(6):
        y0 = horizon + (height - horizon) * (step + 0.2) / 6
        draw.rectangle(
            (
                road_centre - 0.004 * width * (step + 1),
                y0,
                road_centre + 0.004 * width * (step + 1),
                y0 + 0.06 * (height - horizon),
            ),
            fill=(235, 235, 220),
        )

    # Half of the buildings are the street's, half the place's own.
    street_buildings = [_building(street) for _ in range(_BUILDINGS_PER_SCENE)]
    own = set(place.permutation(_BUILDINGS_PER_SCENE)[: _BUILDINGS_PER_SCENE // 2 + 1].tolist())
    buildings = [_building(place) if index in own else building for index, building in enumerate(street_buildings)]
    for building in sorted(buildings, key=lambda building: -building["height"]):
        _draw_building(draw, building, horizon, height, width)
    for _ in range(int(place.integers(3, 6))):
        _draw_street_object(draw, place, horizon, height, width)

    # Weathering: a smooth place-specific shading and a fine grain.
    shading = Image.fromarray(place.uniform(0.8, 1.2, size=(5, 7)).astype(np.float32))
    shading = np.asarray(shading.resize((width, height), Image.Resampling.BILINEAR))[:, :, None]
    grain = place.normal(1.0, 0.04, size=(height, width, 1)).astype(np.float32)
    pixels = np.asarray(image, dtype=np.float32) * shading * grain
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _apply_view(scene: Image.Image, view: ViewChange, size: tuple[int, int]) -> Image.Image:
    """Render ``scene`` as seen under ``view`` at ``size`` (height, width)."""
    if view.scale <= 0:
        raise ValueError(f"ViewChange.scale must be positive, got {view.scale}")
    height, width = size
    angle = math.radians(view.rotation)
    # Affine map from output pixels to canvas pixels: rotate and zoom about the centres, then shift.
    a, b = math.cos(angle) / view.scale, math.sin(angle) / view.scale
    d, e = -math.sin(angle) / view.scale, math.cos(angle) / view.scale
    centre_x, centre_y = scene.width / 2 + view.shift * width, scene.height / 2
    c = centre_x - a * width / 2 - b * height / 2
    f = centre_y - d * width / 2 - e * height / 2
    image = scene.transform((width, height), Image.Transform.AFFINE, (a, b, c, d, e, f), Image.Resampling.BILINEAR)

    pixels = np.asarray(image, dtype=np.float32) / 255.0
    pixels = np.clip(pixels * (np.asarray(view.tint, dtype=np.float32) * view.brightness), 0.0, 1.0) ** view.gamma
    if view.noise > 0:
        pixels = pixels + np.random.default_rng(view.noise_seed).normal(0.0, view.noise, pixels.shape).astype(
            np.float32
        )
    return Image.fromarray(np.round(np.clip(pixels, 0.0, 1.0) * 255).astype(np.uint8))


def render_view(place_id: int, view: ViewChange, size: tuple[int, int] = (224, 224), seed: int = 0) -> Image.Image:
    """Render place ``place_id`` of the world ``seed`` under ``view`` as an RGB image of ``size`` (height, width)."""
    return _apply_view(_render_scene(place_id, _canvas_size(size), seed), view, size)


def _save_jpeg(image: Image.Image, path: Path) -> None:
    with atomic_write(path, "wb") as handle:
        image.save(handle, format="JPEG", quality=_JPEG_QUALITY)


def _image_names(rng: np.random.Generator, count: int) -> list[str]:
    """Distinct 16-digit names like the RobotCar timestamps, in random order (they reveal no place)."""
    stamps = 1_418_133_000_000_000 + rng.choice(10**12, size=count, replace=False)
    return [f"{stamp}.jpg" for stamp in stamps]


def _list_pairs(
    places: Sequence[int], queries: dict[int, str], references: dict[int, str], rng: np.random.Generator
) -> list[tuple[str, str, int]]:
    """A positive and a negative per place, in random order; half of the negatives are hard (same street)."""
    pairs = []
    for place in places:
        pairs.append((queries[place], references[place], 1))
        sibling = [
            other for other in places if other != place and other // PLACES_PER_STREET == place // PLACES_PER_STREET
        ]
        others = [other for other in places if other != place]
        negative = sibling[0] if sibling and rng.uniform() < 0.5 else others[rng.integers(len(others))]
        pairs.append((queries[place], references[negative], 0))
    return [pairs[index] for index in rng.permutation(len(pairs))]


def make_pair_dataset(
    root: str | Path, num_places: int = 100, seed: int = 0, image_size: tuple[int, int] = (224, 224)
) -> dict:
    """Write a loop-verification dataset in the format of the real pair lists.

    Layout (list paths are relative to ``root/images``, the dataset root)::

        root/images/Synth_query/<id>.jpg, Synth_ref/, Synth_night_ref/   train and test places
        root/images/Synth_val_query/<id>.jpg, Synth_val_ref/             final places
        root/train/synth_qDay_dbDay_train.txt, synth_qDay_dbNight_train.txt  labelled (training)
        root/test/synth_qDay_dbDay_easy_final.txt, synth_qDay_dbNight_diff_final.txt  labelled (testing)
        root/final/synth_qDay_dbDay_val_final.txt        unlabelled (final testing)
        root/final_labels/synth_qDay_dbDay_val_final_labels.txt  its hidden labels, one 1/0 a line

    Training, test and final places are disjoint streets. Each list has one positive (the same
    place under another view) and one negative per query (half of them from the same street).

    Args:
        root: output folder.
        num_places: number of places (at least 12); about 2.75 images are written per place.
        seed: the world and the views; the same seed writes the same files.
        image_size: (height, width) of the images.

    Returns:
        ``image_root``, ``train_dir``, ``test_dir``, ``final_dir`` (Paths), ``train_lists`` and
        ``test_lists`` (lists of Paths), ``final_list``, ``final_labels`` (Paths) and ``num_images``.
    """
    if num_places < 12:
        raise ValueError(f"num_places must be at least 12 (places of three splits), got {num_places}")
    root = Path(root)
    image_root = root / "images"
    rng = np.random.default_rng([seed, 4])
    streets = math.ceil(num_places / PLACES_PER_STREET)
    train_streets, test_streets = round(streets * 0.5), max(1, round(streets * 0.25))
    first_test, first_final = train_streets * PLACES_PER_STREET, (train_streets + test_streets) * PLACES_PER_STREET
    splits = {
        "train": range(0, first_test),
        "test": range(first_test, first_final),
        "final": range(first_final, num_places),
    }
    folders = {"query": "Synth_query", "ref": "Synth_ref", "night_ref": "Synth_night_ref"}
    final_folders = {"query": "Synth_val_query", "ref": "Synth_val_ref"}
    names = iter(_image_names(rng, 3 * num_places))
    images: dict[str, dict[int, str]] = {kind: {} for kind in folders}
    canvas = _canvas_size(image_size)
    for place in range(num_places):
        scene = _render_scene(place, canvas, seed)
        kinds = final_folders if place in splits["final"] else folders
        for kind, folder in kinds.items():
            relative = f"{folder}/{next(names)}"
            _save_jpeg(
                _apply_view(scene, random_view(rng, 0.5, night=kind == "night_ref"), image_size), image_root / relative
            )
            images[kind][place] = relative

    def write_lists(split: str, folder: Path, names_by_reference: dict[str, str]) -> list[Path]:
        paths = []
        for reference, name in names_by_reference.items():
            path = folder / name
            write_pair_list(path, _list_pairs(splits[split], images["query"], images[reference], rng))
            paths.append(path)
        return paths

    train_lists = write_lists(
        "train", root / "train", {"ref": "synth_qDay_dbDay_train.txt", "night_ref": "synth_qDay_dbNight_train.txt"}
    )
    test_lists = write_lists(
        "test",
        root / "test",
        {"ref": "synth_qDay_dbDay_easy_final.txt", "night_ref": "synth_qDay_dbNight_diff_final.txt"},
    )
    final_pairs = _list_pairs(splits["final"], images["query"], images["ref"], rng)
    final_list = root / "final" / "synth_qDay_dbDay_val_final.txt"
    final_labels = root / "final_labels" / "synth_qDay_dbDay_val_final_labels.txt"
    write_pair_list(final_list, [(query, reference) for query, reference, _ in final_pairs])
    write_result_file(final_labels, [label for _, _, label in final_pairs])
    return {
        "image_root": image_root,
        "train_dir": root / "train",
        "test_dir": root / "test",
        "final_dir": root / "final",
        "train_lists": train_lists,
        "test_lists": test_lists,
        "final_list": final_list,
        "final_labels": final_labels,
        "num_images": sum(len(by_place) for by_place in images.values()),
    }


def utm_image_name(east: float, north: float, identifier: str, zone: tuple[int, str] = _UTM_ZONE) -> str:
    """File name in the VPR benchmark format ``@east@north@zone@letter@lat@lon@id@...@.jpg``.

    Latitude, longitude and the later fields (tile, heading, pitch, roll, height, timestamp,
    note) are left empty; ``identifier`` fills the panorama-id field so that names are unique.
    """
    fields = ["", f"{east:010.2f}", f"{north:010.2f}", str(zone[0]), zone[1], "", "", identifier]
    return "@".join(fields + [""] * 7 + [".jpg"])


def _street_positions(
    rng: np.random.Generator, count: int, spacing_m: float, origin: tuple[float, float]
) -> np.ndarray:
    """(count, 2) positions along a gently curving street that never turns back on itself."""
    base_heading = rng.uniform(0, 2 * math.pi)
    headings = base_heading + np.clip(np.cumsum(rng.normal(0.0, 0.08, size=count)), -0.6, 0.6)
    steps = spacing_m * np.stack([np.cos(headings), np.sin(headings)], axis=1)
    steps[0] = 0.0
    return np.asarray(origin) + np.cumsum(steps, axis=0)


def make_retrieval_dataset(
    root: str | Path,
    num_places: int = 20,
    queries_per_place: int = 2,
    seed: int = 0,
    image_size: tuple[int, int] = (224, 224),
    spacing_m: float = 50.0,
    jitter_m: float = 5.0,
) -> dict:
    """Write a VPR benchmark: ``root/database`` and ``root/queries`` with UTM positions in the names.

    Places lie along a street ``spacing_m`` apart, so with the usual 25 m threshold each query has
    one positive (the database image of its place). Database images are mild views; queries are
    stronger views with positions jittered by up to ``jitter_m``, every second one at night (in
    ``queries/night/``). A third of the database is in ``database/`` itself, the rest in nested
    sub-folders, to exercise recursive search.

    Returns:
        ``database`` and ``queries`` (Paths), ``num_database`` and ``num_queries``.
    """
    if num_places < 2 or queries_per_place < 1:
        raise ValueError(f"Need num_places >= 2 and queries_per_place >= 1, got {num_places} and {queries_per_place}")
    root = Path(root)
    rng = np.random.default_rng([seed, 5])
    positions = _street_positions(rng, num_places, spacing_m, _UTM_ORIGIN)
    database_folders = ["database", "database/block_a", "database/block_b/corner"]
    canvas = _canvas_size(image_size)
    num_queries = 0
    for place, (east, north) in enumerate(positions):
        scene = _render_scene(place, canvas, seed)
        name = utm_image_name(east, north, f"db{place:05d}")
        _save_jpeg(_apply_view(scene, random_view(rng, 0.2), image_size), root / database_folders[place % 3] / name)
        for visit in range(queries_per_place):
            radius, angle = jitter_m * math.sqrt(rng.uniform()), rng.uniform(0, 2 * math.pi)
            name = utm_image_name(
                east + radius * math.cos(angle), north + radius * math.sin(angle), f"q{place:05d}_{visit}"
            )
            night = visit % 2 == 1
            folder = root / "queries" / "night" if night else root / "queries"
            _save_jpeg(_apply_view(scene, random_view(rng, 0.6, night=night), image_size), folder / name)
            num_queries += 1
    return {
        "database": root / "database",
        "queries": root / "queries",
        "num_database": num_places,
        "num_queries": num_queries,
    }


def _revisit_plan(
    num_frames: int, revisit_segments: int, segment_length: int, rng: np.random.Generator
) -> list[int | None]:
    """For every frame, the new place it revisits (index in order of first visit), or None for a new place.

    New places come in ``revisit_segments + 1`` chunks; after each chunk but the last the vehicle
    drives ``segment_length`` frames of a stretch it passed at least ``segment_length`` places earlier.
    """
    needed = (revisit_segments + 1) * 2 * segment_length + revisit_segments * segment_length
    if revisit_segments < 0 or segment_length < 1 or num_frames < needed:
        raise ValueError(
            f"{num_frames} frames are too few for {revisit_segments} revisit segment(s) of {segment_length} "
            f"frames (segment_length >= 1, revisit_segments >= 0): need at least {needed}"
        )
    new_frames = num_frames - revisit_segments * segment_length
    chunk = new_frames // (revisit_segments + 1)
    plan: list[int | None] = []
    seen = 0
    for segment in range(revisit_segments + 1):
        size = chunk if segment < revisit_segments else new_frames - seen
        plan += [None] * size
        seen += size
        if segment < revisit_segments:
            start = int(rng.integers(0, seen - 2 * segment_length + 1))
            plan += list(range(start, start + segment_length))
    return plan


def make_sequence(
    root: str | Path,
    num_frames: int = 60,
    revisit_segments: int = 2,
    seed: int = 0,
    image_size: tuple[int, int] = (224, 224),
    step_m: float = 10.0,
    segment_length: int = 5,
    positions_in_names: bool = False,
) -> dict:
    """Write an ordered image sequence of a drive that returns to streets it passed before.

    Writes ``root/images/000000.jpg``... (``000000@<x>@<y>.jpg`` with ``positions_in_names``),
    ``root/poses.csv`` (``name,x,y`` in metres, UTM-like) and ``root/revisits.csv``
    (``frame,revisited_frame``: each revisiting frame and the first visit of its place). New
    places are ``step_m`` apart along a street that never turns back, so only the revisits
    come back near earlier frames; revisits are stronger view changes, every second segment at night.

    Returns:
        ``images`` (Path), ``poses`` (Path), ``revisits_file`` (Path) and ``revisits``
        (list of ``(frame, revisited_frame)`` indices).
    """
    root = Path(root)
    rng = np.random.default_rng([seed, 6])
    plan = _revisit_plan(num_frames, revisit_segments, segment_length, rng)
    new_positions = _street_positions(rng, plan.count(None), step_m, _UTM_ORIGIN)
    canvas = _canvas_size(image_size)
    scenes: list[Image.Image] = []  # scene of each new place, in order of first visit
    first_frames: list[int] = []  # frame of each new place's first visit
    poses, revisits, names = [], [], []
    segment = 0
    for frame, revisited in enumerate(plan):
        if revisited is None:
            place = len(scenes)
            scenes.append(_render_scene(place, canvas, seed))
            first_frames.append(frame)
            position = new_positions[place]
            view = random_view(rng, 0.3)
        else:
            place = revisited
            segment += plan[frame - 1] is None
            revisits.append((frame, first_frames[place]))
            position = new_positions[place] + rng.normal(0.0, 1.0, size=2)
            view = random_view(rng, 0.6, night=segment % 2 == 0)
        name = f"{frame:06d}@{position[0]:.2f}@{position[1]:.2f}.jpg" if positions_in_names else f"{frame:06d}.jpg"
        _save_jpeg(_apply_view(scenes[place], view, image_size), root / "images" / name)
        names.append(name)
        poses.append((name, f"{position[0]:.2f}", f"{position[1]:.2f}"))
    atomic_write_text(root / "poses.csv", _csv([("name", "x", "y"), *poses]))
    revisit_rows = [(names[frame], names[first]) for frame, first in revisits]
    atomic_write_text(root / "revisits.csv", _csv([("frame", "revisited_frame"), *revisit_rows]))
    return {
        "images": root / "images",
        "poses": root / "poses.csv",
        "revisits_file": root / "revisits.csv",
        "revisits": revisits,
    }


def _csv(rows: Sequence[Sequence[str]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


_CITY_NAMES = ("Synthburg", "Renderton", "Pixelham", "Voxelby")


def _panorama_id(rng: np.random.Generator) -> str:
    """A 22-character id from the alphabet of Street View panorama ids."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    return "".join(alphabet[index] for index in rng.integers(len(alphabet), size=22))


def make_place_dataset(
    root: str | Path,
    num_places: int = 40,
    images_per_place: int = 4,
    layout: str = "gsv",
    seed: int = 0,
    image_size: tuple[int, int] = (224, 224),
    num_cities: int = 2,
) -> dict:
    """Write a place dataset: ``images_per_place`` views of each place under changes of light and viewpoint.

    Every fourth view of a place is at night. ``layout="gsv"`` writes the GSV-Cities layout
    (``root/Dataframes/<City>.csv`` and ``root/Images/<City>/...jpg``, the places spread over
    ``num_cities`` cities whose place ids all start at 0); ``layout="folders"`` writes
    ``root/place_<n>/<k>.jpg``. Use another ``seed`` than a validation benchmark's for other places.

    Returns:
        ``root`` (Path), ``layout``, ``num_places`` and ``num_images``.
    """
    if layout not in ("gsv", "folders"):
        raise ValueError(f"layout must be 'gsv' or 'folders', got {layout!r}")
    if num_places < 1 or images_per_place < 1 or not 1 <= num_cities <= len(_CITY_NAMES):
        raise ValueError(
            f"Need num_places >= 1, images_per_place >= 1 and 1 <= num_cities <= {len(_CITY_NAMES)}, "
            f"got {num_places}, {images_per_place} and {num_cities}"
        )
    root = Path(root)
    rng = np.random.default_rng([seed, 7])
    canvas = _canvas_size(image_size)
    rows: dict[str, list[tuple]] = {city: [] for city in _CITY_NAMES[:num_cities]}
    for place in range(num_places):
        scene = _render_scene(place, canvas, seed)
        city = _CITY_NAMES[place % num_cities]
        place_id = place // num_cities
        lat, lon = float(rng.uniform(-60, 60)), float(rng.uniform(-170, 170))
        for view_index in range(images_per_place):
            image = _apply_view(scene, random_view(rng, 0.5, night=view_index % 4 == 3), image_size)
            if layout == "folders":
                _save_jpeg(image, root / f"place_{place:04d}" / f"{view_index:03d}.jpg")
                continue
            year, month, northdeg = int(rng.integers(2007, 2022)), int(rng.integers(1, 13)), int(rng.integers(360))
            row = (place_id, city, year, month, northdeg, lat, lon, _panorama_id(rng))
            name = f"{city}_{place_id:07d}_{year:04d}_{month:02d}_{northdeg:03d}_{lat}_{lon}_{row[-1]}.jpg"
            _save_jpeg(image, root / "Images" / city / name)
            rows[city].append(row)
    if layout == "gsv":
        header = ("place_id", "city_id", "year", "month", "northdeg", "lat", "lon", "panoid")
        for city, city_rows in rows.items():
            atomic_write_text(root / "Dataframes" / f"{city}.csv", _csv([header, *city_rows]))
    return {"root": root, "layout": layout, "num_places": num_places, "num_images": num_places * images_per_place}
