"""Place datasets: GSV-Cities and folder layouts, the generator, and the input checks."""

import csv
import pickle
import re
import shutil
from pathlib import Path

import pytest

from dinov2.utils.errors import InputError
from dinov2_vpr.data import places as places_module
from dinov2_vpr.data.places import PlaceDatasetError, gsv_image_name, parse_gsv_row, read_places
from dinov2_vpr.data.synthetic import make_place_dataset

SIZE = (28, 28)


@pytest.fixture(scope="module")
def gsv_source(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("gsv") / "data"
    make_place_dataset(root, num_places=6, images_per_place=4, image_size=SIZE)
    return root


@pytest.fixture
def gsv(gsv_source: Path, tmp_path: Path) -> Path:
    """A fresh copy to break."""
    return Path(shutil.copytree(gsv_source, tmp_path / "data"))


def _rows(frame: Path) -> list[dict]:
    with open(frame, newline="") as handle:
        return list(csv.DictReader(handle))


def _write_rows(frame: Path, rows: list[dict]) -> None:
    with open(frame, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_gsv_layout_reads_every_place_with_labels_that_never_collide(gsv_source: Path):
    frames = sorted((gsv_source / "Dataframes").glob("*.csv"))
    assert len(frames) == 2 and all(_rows(frame)[0]["place_id"] == "0" for frame in frames)
    places = read_places(gsv_source, images_per_place=4)
    assert places.layout == "gsv" and places.problems == [] and places.skipped == {"rows": 0, "images": 0, "places": 0}
    assert len(places.names) == len(set(places.names)) == 6
    assert {name.split("/")[1] for name in places.names} == {"0", "1", "2"}  # the same ids in both cities
    assert places.labels == [label for label in range(6) for _ in range(4)]
    for image, label in zip(places.images, places.labels):
        city = places.names[label].split("/")[0]
        assert image.parent == gsv_source / "Images" / city and image.is_file()


def test_gsv_image_name_uses_python_str_of_the_coordinates():
    row = parse_gsv_row(
        {
            "place_id": "12",
            "city_id": "Boston",
            "year": "2017",
            "month": "7",
            "northdeg": "5",
            "lat": "42.35",
            "lon": "-71.060",
            "panoid": "ab_c-D",
        }
    )
    assert gsv_image_name(row) == "Boston_0000012_2017_07_005_42.35_-71.06_ab_c-D.jpg"


def test_folder_layout(tmp_path: Path):
    make_place_dataset(tmp_path, num_places=3, images_per_place=2, layout="folders", image_size=SIZE)
    places = read_places(tmp_path, images_per_place=2)
    assert places.layout == "folders" and places.names == ["place_0000", "place_0001", "place_0002"]
    assert places.labels == [0, 0, 1, 1, 2, 2]
    assert places.images[0] == tmp_path / "place_0000" / "000.jpg"


def test_gsv_problems_are_all_reported_by_file_and_line(gsv: Path, monkeypatch):
    frame = sorted((gsv / "Dataframes").glob("*.csv"))[0]
    rows = _rows(frame)
    images = [gsv / "Images" / row["city_id"] / gsv_image_name(parse_gsv_row(row)) for row in rows]
    rows[1]["month"] = "13"  # line 3: a bad value (place 0 keeps 3 images)
    images[5].unlink()  # line 7: a missing image (place 1)
    images[6].write_bytes(b"not a jpeg")  # line 8: an unreadable image (place 1)
    rows.append(dict(rows[9]))  # line 14: the same image as line 11
    _write_rows(frame, rows)
    checked = []
    monkeypatch.setattr(places_module, "image_problem", lambda path: checked.append(path) or _real(path))

    with pytest.raises(PlaceDatasetError) as error:
        read_places(gsv, images_per_place=4)
    assert isinstance(error.value, InputError)
    assert len(checked) == len(set(checked)) == 4 * 6 - 1  # every distinct image once, not the bad row's
    problems = error.value.problems
    assert problems[0] == f"{frame}:3: bad month '13' (expected an integer from 1 to 12)"
    assert re.fullmatch(rf"{re.escape(str(frame))}:7: image not found: .*{images[5].name}", problems[1])
    assert re.fullmatch(rf"{re.escape(str(frame))}:8: image cannot be read as an image .*", problems[2])
    assert problems[3] == f"{frame}:14: same image as line 11: {images[9]}"
    assert problems[4:] == [
        f"{frame}: place 0 has 3 usable image(s), fewer than images_per_place=4",
        f"{frame}: place 1 has 2 usable image(s), fewer than images_per_place=4",
    ]
    assert "vpr.data.skip_invalid=true" in str(error.value)
    assert pickle.loads(pickle.dumps(error.value)).problems == problems

    places = read_places(gsv, images_per_place=4, skip_invalid=True)
    assert places.skipped == {"rows": 2, "images": 2, "places": 2}
    assert len(places.names) == 4 and frame.stem + "/0" not in places.names
    assert places.problems == problems


_real = places_module.image_problem


def test_missing_column_and_small_places(gsv: Path):
    frame = sorted((gsv / "Dataframes").glob("*.csv"))[1]
    rows = _rows(frame)
    _write_rows(frame, [{key: value for key, value in row.items() if key != "panoid"} for row in rows])
    with pytest.raises(PlaceDatasetError, match=rf"{re.escape(str(frame))}:1: missing column\(s\) panoid; need "):
        read_places(gsv, images_per_place=4)
    places = read_places(gsv, images_per_place=4, skip_invalid=True)
    assert places.skipped == {"rows": 1, "images": 0, "places": 0} and len(places.names) == 3
    with pytest.raises(InputError, match="No usable place"):
        read_places(gsv, images_per_place=5, skip_invalid=True)


def test_many_problems_list_the_first_twenty(tmp_path: Path):
    for place in range(25):
        (tmp_path / f"p{place:02d}").mkdir()
    with pytest.raises(PlaceDatasetError) as error:
        read_places(tmp_path, images_per_place=1)
    message = str(error.value)
    assert message.startswith("25 problem(s) in the place dataset:")
    assert f"{tmp_path / 'p00'}: place has 0 usable image(s), fewer than images_per_place=1" in message
    assert "... and 5 more" in message and "p21" not in message


def test_folder_problems(tmp_path: Path):
    make_place_dataset(tmp_path, num_places=2, images_per_place=3, layout="folders", image_size=SIZE)
    broken = tmp_path / "place_0001" / "001.jpg"
    broken.write_bytes(b"")
    with pytest.raises(PlaceDatasetError) as error:
        read_places(tmp_path, images_per_place=3)
    assert error.value.problems[0].startswith(f"{broken}: cannot be read as an image")
    assert (
        error.value.problems[1]
        == f"{tmp_path / 'place_0001'}: place has 2 usable image(s), fewer than images_per_place=3"
    )


def test_missing_root(tmp_path: Path):
    with pytest.raises(InputError, match="does not exist"):
        read_places(tmp_path / "nope", images_per_place=2)
