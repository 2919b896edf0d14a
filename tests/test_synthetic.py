import csv
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dinov2_vpr.data.pairs import find_pair_lists, parse_pair_list, read_pair_lists
from dinov2_vpr.data.synthetic import (
    PLACES_PER_STREET,
    ViewChange,
    make_pair_dataset,
    make_retrieval_dataset,
    make_sequence,
    random_view,
    render_view,
    utm_image_name,
)

SMALL = (64, 64)
LABELLED_LINE = re.compile(r"^[^,\s]+/\d{16}\.jpg, [^,\s]+/\d{16}\.jpg, [01]$")
UNLABELLED_LINE = re.compile(r"^[^,\s]+/\d{16}\.jpg, [^,\s]+/\d{16}\.jpg$")


def _files(root: Path) -> dict[str, bytes]:
    return {path.relative_to(root).as_posix(): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def _utm(name: str) -> tuple[float, float, int, str]:
    """Parse ``@east@north@zone@letter@...`` independently of the writer."""
    fields = name.split("@")
    return float(fields[1]), float(fields[2]), int(fields[3]), fields[4]


@pytest.fixture(scope="module")
def pair_dataset(tmp_path_factory) -> dict:
    return make_pair_dataset(tmp_path_factory.mktemp("pairs"), num_places=16, seed=0, image_size=SMALL)


# Rendering


def _descriptor(image: Image.Image) -> np.ndarray:
    """Raw pixels downsized to 16x16, centred and normalised (Pearson correlation by dot product)."""
    pixels = np.asarray(image.resize((16, 16), Image.Resampling.BILINEAR), dtype=np.float64).ravel()
    pixels -= pixels.mean()
    return pixels / np.linalg.norm(pixels)


def test_same_place_views_are_more_similar_than_other_places():
    rng = np.random.default_rng(0)
    places = range(12)
    day = np.stack([_descriptor(render_view(place, random_view(rng, 0.5), SMALL, seed=1)) for place in places])
    other = np.stack(
        [
            _descriptor(render_view(place, random_view(rng, 0.5, night=place % 2 == 0), SMALL, seed=1))
            for place in places
        ]
    )
    correlation = day @ other.T
    same = np.diag(correlation)
    different = correlation[~np.eye(len(places), dtype=bool)].reshape(len(places), -1)
    assert same.mean() > different.mean() + 0.2
    assert np.mean(same > different.max(axis=1)) >= 0.75
    same_street = [correlation[place, place ^ 1] for place in places]
    other_street = [
        correlation[a, b] for a in places for b in places if a // PLACES_PER_STREET != b // PLACES_PER_STREET
    ]
    assert np.mean(same_street) > np.mean(other_street)  # hard negatives look alike


def test_render_view_is_deterministic_and_sized():
    view = random_view(np.random.default_rng(3), 0.7, night=True)
    first = render_view(5, view, (48, 80), seed=2)
    assert first.size == (80, 48) and first.mode == "RGB"
    assert np.array_equal(np.asarray(first), np.asarray(render_view(5, view, (48, 80), seed=2)))
    assert not np.array_equal(np.asarray(first), np.asarray(render_view(5, view, (48, 80), seed=3)))


def test_night_views_are_darker():
    rng = np.random.default_rng(0)
    day = [np.asarray(render_view(place, random_view(rng, 0.5), SMALL)).mean() for place in range(6)]
    night = [np.asarray(render_view(place, random_view(rng, 0.5, night=True), SMALL)).mean() for place in range(6)]
    assert max(night) < min(day)


def test_view_change_parameters():
    assert ViewChange() == ViewChange(1.0, 1.0, (1.0, 1.0, 1.0), 0.0, 1.0, 0.0, 0.0, 0)
    calm = random_view(np.random.default_rng(0), 0.0)
    assert (calm.shift, calm.scale, calm.rotation, calm.brightness) == (0.0, 1.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="strength"):
        random_view(np.random.default_rng(0), 1.5)
    with pytest.raises(ValueError, match="scale"):
        render_view(0, ViewChange(scale=0.0), SMALL)


# Pair dataset


def test_pair_dataset_layout_and_format(pair_dataset):
    root = pair_dataset["image_root"].parent
    assert pair_dataset["image_root"] == root / "images"
    assert find_pair_lists(pair_dataset["train_dir"]) == pair_dataset["train_lists"]
    assert find_pair_lists(pair_dataset["test_dir"]) == pair_dataset["test_lists"]
    assert find_pair_lists(pair_dataset["final_dir"]) == [pair_dataset["final_list"]]
    assert pair_dataset["final_list"].name.endswith("_val_final.txt")
    assert pair_dataset["final_labels"].parent not in (
        pair_dataset["train_dir"],
        pair_dataset["test_dir"],
        pair_dataset["final_dir"],
    )
    folders = {path.name for path in pair_dataset["image_root"].iterdir()}
    assert folders == {"Synth_query", "Synth_ref", "Synth_night_ref", "Synth_val_query", "Synth_val_ref"}
    images = list(pair_dataset["image_root"].rglob("*.jpg"))
    assert len(images) == pair_dataset["num_images"]
    with Image.open(images[0]) as image:
        assert image.size == (SMALL[1], SMALL[0]) and image.format == "JPEG"

    for path in pair_dataset["train_lists"] + pair_dataset["test_lists"]:
        lines = path.read_text().splitlines()
        assert all(LABELLED_LINE.match(line) for line in lines), path
    assert all(UNLABELLED_LINE.match(line) for line in pair_dataset["final_list"].read_text().splitlines())


def test_pair_dataset_lists_read_and_are_balanced(pair_dataset):
    image_root = pair_dataset["image_root"]
    query_sets = {}
    for split in ("train", "test"):
        pairs, problems = read_pair_lists(pair_dataset[f"{split}_lists"], image_root)
        labels = [pair.label for pair in pairs]
        assert problems == [] and labels.count(1) == labels.count(0) > 0
        query_sets[split] = {pair.query for pair in pairs}
    final_pairs, problems = read_pair_lists([pair_dataset["final_list"]], image_root)
    assert problems == [] and all(pair.label is None for pair in final_pairs)
    hidden = pair_dataset["final_labels"].read_text().splitlines()
    assert len(hidden) == len(final_pairs) and hidden.count("1") == hidden.count("0")
    query_sets["final"] = {pair.query for pair in final_pairs}
    assert not query_sets["train"] & query_sets["test"]
    assert not (query_sets["train"] | query_sets["test"]) & query_sets["final"]


def test_pair_dataset_is_deterministic_by_seed(tmp_path, pair_dataset):
    again = make_pair_dataset(tmp_path / "again", num_places=16, seed=0, image_size=SMALL)
    assert _files(again["image_root"].parent) == _files(pair_dataset["image_root"].parent)
    other = make_pair_dataset(tmp_path / "other", num_places=16, seed=1, image_size=SMALL)
    assert parse_pair_list(other["train_lists"][0])[0] != parse_pair_list(pair_dataset["train_lists"][0])[0]


def test_pair_dataset_needs_enough_places(tmp_path):
    with pytest.raises(ValueError, match="at least 12"):
        make_pair_dataset(tmp_path, num_places=4)


# Retrieval dataset


def test_retrieval_dataset_layout_and_utm_names(tmp_path):
    info = make_retrieval_dataset(tmp_path, num_places=9, queries_per_place=2, seed=0, image_size=SMALL)
    database = sorted(info["database"].rglob("*.jpg"))
    queries = sorted(info["queries"].rglob("*.jpg"))
    assert (len(database), len(queries)) == (info["num_database"], info["num_queries"]) == (9, 18)
    assert any(path.parent == info["database"] for path in database)
    assert any(len(path.relative_to(info["database"]).parts) > 2 for path in database)
    assert any(path.parent == info["queries"] / "night" for path in queries)
    assert all(re.fullmatch(r"@\d{7}\.\d{2}@\d{7}\.\d{2}@10@S@.*@\.jpg", path.name) for path in database + queries)

    database_utm = np.array([_utm(path.name)[:2] for path in database])
    gaps = np.linalg.norm(database_utm[:, None] - database_utm[None], axis=2)
    assert gaps[~np.eye(len(database), dtype=bool)].min() > 30.0  # places tens of metres apart
    for query in queries:
        east, north, zone, letter = _utm(query.name)
        assert (zone, letter) == (10, "S")
        distances = np.linalg.norm(database_utm - [east, north], axis=1)
        nearest = database[int(np.argmin(distances))]
        assert distances.min() <= 25.0 and np.sum(distances <= 25.0) == 1
        place = re.search(r"@q(\d{5})_\d@", query.name).group(1)
        assert f"@db{place}@" in nearest.name


def test_utm_image_name_format():
    name = utm_image_name(543256.123, 4180123.456, "id7")
    assert name.startswith("@0543256.12@4180123.46@10@S@@@id7@") and name.endswith("@.jpg")
    assert _utm(name) == (543256.12, 4180123.46, 10, "S")


# Sequence


def test_sequence_revisits_match_poses(tmp_path):
    info = make_sequence(tmp_path, num_frames=40, revisit_segments=2, seed=0, image_size=SMALL, segment_length=4)
    names = sorted(path.name for path in info["images"].iterdir())
    assert names == [f"{frame:06d}.jpg" for frame in range(40)]
    with open(info["poses"], newline="") as handle:
        poses = list(csv.DictReader(handle))
    assert [row["name"] for row in poses] == names
    xy = np.array([[float(row["x"]), float(row["y"])] for row in poses])

    revisits = info["revisits"]
    assert len(revisits) == 8 and all(frame > first + 4 for frame, first in revisits)
    for frame, first in revisits:
        assert np.linalg.norm(xy[frame] - xy[first]) < 5.0
    revisiting = {frame for frame, _ in revisits}
    new = [frame for frame in range(40) if frame not in revisiting]
    new_gaps = np.linalg.norm(xy[new][:, None] - xy[new][None], axis=2)
    assert new_gaps[~np.eye(len(new), dtype=bool)].min() > 5.0  # only revisits come back

    with open(info["revisits_file"], newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["frame", "revisited_frame"]
    assert rows[1:] == [[names[frame], names[first]] for frame, first in revisits]


def test_sequence_revisited_frames_look_alike(tmp_path):
    info = make_sequence(tmp_path, num_frames=30, revisit_segments=1, seed=1, image_size=SMALL, segment_length=5)
    descriptors = []
    for path in sorted(info["images"].iterdir()):
        with Image.open(path) as image:
            descriptors.append(_descriptor(image.convert("RGB")))
    descriptors = np.stack(descriptors)
    correlation = descriptors @ descriptors.T
    matched = [correlation[frame, first] for frame, first in info["revisits"]]
    revisiting = {frame for frame, _ in info["revisits"]}
    unmatched = [
        correlation[frame, other]
        for frame in revisiting
        for other in range(30)
        if other != frame and (frame, other) not in info["revisits"] and other not in revisiting
    ]
    assert np.mean(matched) > np.mean(unmatched)


def test_sequence_positions_in_names_and_bad_sizes(tmp_path):
    info = make_sequence(
        tmp_path / "named",
        num_frames=24,
        revisit_segments=1,
        image_size=(32, 32),
        segment_length=3,
        positions_in_names=True,
    )
    with open(info["poses"], newline="") as handle:
        poses = list(csv.DictReader(handle))
    assert len(poses) == 24
    for row in poses:
        frame, x, y = Path(row["name"]).stem.split("@")
        assert frame.isdigit()
        assert (float(x), float(y)) == (float(row["x"]), float(row["y"]))
    assert sorted(path.name for path in info["images"].iterdir())[0].startswith("000000@")
    with pytest.raises(ValueError, match="too few"):
        make_sequence(tmp_path / "short", num_frames=10, revisit_segments=2, segment_length=5)
