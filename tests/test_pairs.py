import logging
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dinov2_vpr.data import pairs as pairs_module
from dinov2_vpr.data.pairs import (
    Pair,
    PairListError,
    find_pair_lists,
    parse_pair_list,
    read_pair_lists,
    split_by_query,
    write_pair_list,
    write_result_file,
)

REAL_COUNTS = {
    "Kudamm_diff_final.txt": (200, True),
    "robotcar_qAutumn_dbSunCloud_easy_final.txt": (400, True),
    "robotcar_qAutumn_dbSunCloud_val_final.txt": (1600, False),
}


@pytest.fixture(scope="module")
def real_lists(pairlists_dir) -> list[Path]:
    """The real EE5346 lists from ../shared beside the checkout (conftest skips, or fails under CI=true, if absent)."""
    return find_pair_lists(pairlists_dir)


def _write_image(path: Path, size: tuple[int, int] = (8, 6)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (120, 80, 40)).save(path, format="JPEG")


def _write_list(folder: Path, name: str, text: str, images: tuple[str, ...] = ()) -> Path:
    """A pair list file with ``text`` and stand-in images at the given relative paths."""
    for image in images:
        _write_image(folder / image)
    path = folder / name
    path.write_bytes(text.encode("utf-8"))
    return path


# Real lists


def test_real_lists_parse(real_lists):
    assert [path.name for path in real_lists] == sorted(REAL_COUNTS)
    for path in real_lists:
        expected_count, labelled = REAL_COUNTS[path.name]
        pairs, problems = parse_pair_list(path)
        assert problems == []
        assert len(pairs) == expected_count
        assert [pair.line for pair in pairs] == list(range(1, expected_count + 1))
        assert all(pair.source == str(path) for pair in pairs)
        if labelled:
            labels = [pair.label for pair in pairs]
            assert set(labels) == {0, 1}
            assert labels.count(1) == expected_count // 2
        else:
            assert all(pair.label is None for pair in pairs)
    kudamm = real_lists[0]
    first = Pair("Kudamm_mini_query/image0082.jpg", "Kudamm_mini_ref/image0077.jpg", 1, str(kudamm), 1)
    assert parse_pair_list(kudamm)[0][0] == first


def test_real_lists_pass_with_standin_images(real_lists, tmp_path):
    parsed = [pair for path in real_lists for pair in parse_pair_list(path)[0]]
    for relative in {name for pair in parsed for name in (pair.query, pair.reference)}:
        _write_image(tmp_path / relative)
    pairs, problems = read_pair_lists(real_lists, tmp_path)
    assert problems == []
    assert pairs == parsed
    assert len(pairs) == sum(count for count, _ in REAL_COUNTS.values())


def test_real_lists_round_trip_byte_for_byte(real_lists, tmp_path):
    for path in real_lists:
        copy = tmp_path / path.name
        write_pair_list(copy, parse_pair_list(path)[0])
        assert copy.read_bytes() == path.read_bytes()


def test_real_list_split_by_query_keeps_queries_apart(real_lists):
    pairs = parse_pair_list(real_lists[1])[0]
    assert real_lists[1].name == "robotcar_qAutumn_dbSunCloud_easy_final.txt"
    train, val = split_by_query(pairs, 0.2, seed=0)
    assert not {pair.query for pair in train} & {pair.query for pair in val}
    assert sorted(train + val, key=lambda pair: pair.line) == pairs
    assert abs(len(val) - 80) <= 5


# Format


def test_tolerates_spaces_crlf_and_blank_lines(tmp_path):
    path = _write_list(tmp_path, "list.txt", "\r\n a/1.jpg ,b/1.jpg,1\r\n\r\n  a/2.jpg,   b/2.jpg , 0\r\n\r\n")
    pairs, problems = parse_pair_list(path)
    assert problems == []
    assert [(pair.query, pair.reference, pair.label, pair.line) for pair in pairs] == [
        ("a/1.jpg", "b/1.jpg", 1, 2),
        ("a/2.jpg", "b/2.jpg", 0, 4),
    ]


def test_unlabelled_list(tmp_path):
    path = _write_list(tmp_path, "x_val_final.txt", "a/1.jpg, b/1.jpg\na/2.jpg, b/2.jpg\n")
    pairs, problems = parse_pair_list(path)
    assert problems == [] and [pair.label for pair in pairs] == [None, None]


@pytest.mark.parametrize(
    "line, expected",
    [
        ("a/1.jpg", "expected 2 columns (query, reference) or 3 (query, reference, label) separated by commas, got 1"),
        ("a/1.jpg, b/1.jpg, 1, extra", "got 4"),
        ("a/1.jpg, b/1.jpg, 2", "label must be 0 or 1, got '2'"),
        ("a/1.jpg, b/1.jpg, yes", "label must be 0 or 1, got 'yes'"),
        (", b/1.jpg, 1", "empty query path"),
        ("a/1.jpg, , 1", "empty reference path"),
    ],
)
def test_malformed_line_is_reported_with_file_and_line(tmp_path, line, expected):
    path = _write_list(tmp_path, "list.txt", f"a/0.jpg, b/0.jpg, 1\n{line}\na/2.jpg, b/2.jpg, 0\n")
    pairs, problems = parse_pair_list(path)
    assert [pair.line for pair in pairs] == [1, 3]
    assert len(problems) == 1
    assert problems[0].startswith(f"{path}:2: ")
    assert expected in problems[0]


def test_mixed_columns_flag_the_minority_lines(tmp_path):
    path = _write_list(tmp_path, "list.txt", "a/1.jpg, b/1.jpg, 1\na/2.jpg, b/2.jpg\na/3.jpg, b/3.jpg, 0\n")
    pairs, problems = parse_pair_list(path)
    assert [pair.line for pair in pairs] == [1, 3]
    assert problems == [f"{path}:2: has 2 columns but the list is labelled (2 lines have 3 columns)"]


def test_mixed_columns_tie_follows_the_first_line(tmp_path):
    path = _write_list(tmp_path, "list.txt", "a/1.jpg, b/1.jpg\na/2.jpg, b/2.jpg, 1\n")
    pairs, problems = parse_pair_list(path)
    assert [pair.line for pair in pairs] == [1]
    assert len(problems) == 1 and problems[0].startswith(f"{path}:2: has 3 columns but the list is unlabelled")


def test_empty_list_and_bad_encoding_are_problems(tmp_path):
    empty = _write_list(tmp_path, "empty.txt", "\n\n")
    assert parse_pair_list(empty) == ([], [f"{empty}:1: the list holds no pairs"])
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"a/1.jpg, b/1.jpg, 1\n\xff\xfe, b, 1\n")
    pairs, problems = parse_pair_list(binary)
    assert len(pairs) == 1 and len(problems) == 1 and problems[0].startswith(f"{binary}:2: not UTF-8 text")


def test_missing_list_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nothing\.txt"):
        parse_pair_list(tmp_path / "nothing.txt")


# Lists with images


def test_missing_and_corrupt_images_are_reported(tmp_path):
    path = _write_list(
        tmp_path,
        "list.txt",
        "q/1.jpg, r/1.jpg, 1\nq/2.jpg, r/missing.jpg, 0\nq/3.jpg, r/corrupt.jpg, 1\n",
        images=("q/1.jpg", "r/1.jpg", "q/2.jpg", "q/3.jpg"),
    )
    (tmp_path / "r" / "corrupt.jpg").write_bytes(b"this is not a JPEG")
    with pytest.raises(PairListError) as error:
        read_pair_lists([path], tmp_path)
    problems = error.value.problems
    assert len(problems) == 2
    assert problems[0].startswith(f"{path}:2: reference image not found: {tmp_path / 'r' / 'missing.jpg'}")
    assert problems[1].startswith(f"{path}:3: reference image cannot be read as an image")
    assert str(tmp_path / "r" / "corrupt.jpg") in problems[1]


def test_truncated_jpeg_header_is_corrupt(tmp_path):
    _write_image(tmp_path / "q/1.jpg", size=(32, 32))
    good = (tmp_path / "q/1.jpg").read_bytes()
    (tmp_path / "r").mkdir()
    (tmp_path / "r/1.jpg").write_bytes(good[:20])
    path = _write_list(tmp_path, "list.txt", "q/1.jpg, r/1.jpg, 1\n")
    with pytest.raises(PairListError, match=r"list.txt:1: reference image cannot be read"):
        read_pair_lists([path], tmp_path)


def test_all_problems_across_files_in_one_error(tmp_path):
    images = ("q/1.jpg", "r/1.jpg")
    first = _write_list(tmp_path, "a.txt", "q/1.jpg, r/1.jpg, 1\nq/1.jpg\nq/1.jpg, r/1.jpg, 5\n", images)
    second = _write_list(tmp_path, "b.txt", "q/1.jpg, r/gone.jpg, 1\nq/gone.jpg, r/1.jpg, 0\nq/1.jpg, r/1.jpg, 1, 1\n")
    with pytest.raises(PairListError) as error:
        read_pair_lists([first, second], tmp_path)
    problems = error.value.problems
    locations = [re.match(r"(.*):(\d+): ", problem).groups() for problem in problems]
    assert locations == [
        (str(first), "2"),
        (str(first), "3"),
        (str(second), "1"),
        (str(second), "2"),
        (str(second), "3"),
    ]
    message = str(error.value)
    assert message.startswith("5 problem(s) in the pair lists:")
    assert all(problem in message for problem in problems)
    assert message.endswith("Fix these lines or images, or set vpr.data.skip_invalid=true to skip the invalid pairs.")
    assert isinstance(error.value, ValueError)
    copy = pickle.loads(pickle.dumps(error.value))
    assert copy.problems == problems and str(copy) == message


def test_error_lists_first_20_problems_and_counts_the_rest(tmp_path):
    path = _write_list(tmp_path, "list.txt", "".join(f"q/{index}.jpg, r/{index}.jpg, 2\n" for index in range(25)))
    with pytest.raises(PairListError) as error:
        read_pair_lists([path], tmp_path)
    message = str(error.value)
    assert len(error.value.problems) == 25
    assert f"{path}:20: label" in message and f"{path}:21: label" not in message
    assert "  ... and 5 more" in message


def test_skip_invalid_drops_bad_pairs_and_warns(tmp_path, caplog, monkeypatch):
    images = ("q/1.jpg", "r/1.jpg", "q/2.jpg", "r/2.jpg")
    path = _write_list(
        tmp_path,
        "list.txt",
        "q/1.jpg, r/1.jpg, 1\nq/2.jpg, r/x.jpg, 0\nbad line\nq/2.jpg, r/2.jpg, 0\nq/1.jpg, r/1.jpg, 3\n",
        images,
    )
    # The project's logger, whose handlers write the run's logs/log.txt (caplog needs it to propagate).
    monkeypatch.setattr(logging.getLogger("dinov2"), "propagate", True)
    with caplog.at_level(logging.WARNING, logger="dinov2"):
        pairs, problems = read_pair_lists([path], tmp_path, skip_invalid=True)
    assert {record.name for record in caplog.records} == {"dinov2"}
    assert [pair.line for pair in pairs] == [1, 4]
    assert len(problems) == 3
    assert "3 problem(s), 2 valid pair(s) kept" in caplog.text


def test_paths_outside_the_dataset_root_are_problems_unless_allowed(tmp_path):
    root = tmp_path / "dataset"
    outside = tmp_path / "elsewhere" / "x.jpg"
    _write_image(outside)
    text = f"q/1.jpg, r/1.jpg, 1\nq/1.jpg, ../elsewhere/x.jpg, 0\n{outside}, r/1.jpg, 0\nq/../r/1.jpg, q/1.jpg, 1\n"
    path = _write_list(root, "list.txt", text, ("q/1.jpg", "r/1.jpg"))
    with pytest.raises(PairListError) as error:
        read_pair_lists([path], root)
    assert error.value.problems == [
        f"{path}:2: reference image path ../elsewhere/x.jpg leads outside the dataset root {root}",
        f"{path}:3: query image path {outside} is absolute; paths must be relative to the dataset root {root}",
    ]
    pairs, problems = read_pair_lists([path], root, allow_outside_root=True)
    assert [pair.line for pair in pairs] == [1, 2, 3, 4] and problems == []


def test_skip_invalid_with_nothing_left_raises(tmp_path):
    path = _write_list(tmp_path, "list.txt", "q/1.jpg, r/1.jpg, 1\n")
    with pytest.raises(ValueError, match="No valid pairs left"):
        read_pair_lists([path], tmp_path, skip_invalid=True)


def test_check_images_off_skips_image_checks(tmp_path):
    path = _write_list(tmp_path, "list.txt", "q/1.jpg, r/1.jpg, 1\n")
    pairs, problems = read_pair_lists([path], tmp_path, check_images=False)
    assert len(pairs) == 1 and problems == []


def test_each_distinct_image_is_checked_once(tmp_path, monkeypatch):
    images = ("q/1.jpg", "r/1.jpg", "r/2.jpg")
    path = _write_list(tmp_path, "list.txt", "q/1.jpg, r/1.jpg, 1\nq/1.jpg, r/2.jpg, 0\nq/1.jpg, r/1.jpg, 1\n", images)
    checked = []
    original = pairs_module.image_problem

    def counting(image_path):
        checked.append(image_path)
        return original(image_path)

    monkeypatch.setattr(pairs_module, "image_problem", counting)
    read_pair_lists([path, path], tmp_path)
    assert sorted(checked) == sorted(tmp_path / image for image in images)


def test_find_pair_lists(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_pair_lists(tmp_path / "missing")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "nested.txt").write_text("a, b, 1\n")
    (tmp_path / "notes.md").write_text("x")
    with pytest.raises(FileNotFoundError, match=r"No pair lists \(.txt files\) directly in"):
        find_pair_lists(tmp_path)
    for name in ("b.txt", "a.txt"):
        (tmp_path / name).write_text("a, b, 1\n")
    assert find_pair_lists(tmp_path) == [tmp_path / "a.txt", tmp_path / "b.txt"]


# Split


def _pairs_with_query_groups(sizes: list[int]) -> list[Pair]:
    pairs = []
    for query, size in enumerate(sizes):
        pairs += [Pair(f"q/{query}.jpg", f"r/{query}_{k}.jpg", k % 2, "list.txt", 0) for k in range(size)]
    order = np.random.default_rng(0).permutation(len(pairs))
    return [
        Pair(pairs[index].query, pairs[index].reference, pairs[index].label, "list.txt", line)
        for line, index in enumerate(order, start=1)
    ]


def test_split_by_query_is_disjoint_deterministic_and_sized():
    pairs = _pairs_with_query_groups([1 + index % 4 for index in range(60)])
    train, val = split_by_query(pairs, 0.25, seed=3)
    assert not {pair.query for pair in train} & {pair.query for pair in val}
    assert len(train) + len(val) == len(pairs)
    assert train == [pair for pair in pairs if pair in set(train)]  # input order kept
    assert abs(len(val) - 0.25 * len(pairs)) <= 4
    assert (train, val) == split_by_query(pairs, 0.25, seed=3)
    reversed_train, reversed_val = split_by_query(pairs[::-1], 0.25, seed=3)  # input order does not matter
    assert (reversed_train[::-1], reversed_val[::-1]) == (train, val)
    assert {pair.query for pair in split_by_query(pairs, 0.25, seed=4)[1]} != {pair.query for pair in val}


def test_split_by_query_keeps_both_parts_non_empty():
    pairs = _pairs_with_query_groups([5, 5])
    for fraction in (0.01, 0.5, 0.99):
        train, val = split_by_query(pairs, fraction, seed=0)
        assert len(train) == 5 and len(val) == 5
    with pytest.raises(ValueError, match="need at least 2 distinct query images, got 1"):
        split_by_query(_pairs_with_query_groups([4]), 0.5, seed=0)
    with pytest.raises(ValueError, match="val_fraction"):
        split_by_query(pairs, 1.0, seed=0)


# Writing


def test_write_pair_list_round_trip(tmp_path):
    path = tmp_path / "out" / "list.txt"
    write_pair_list(
        path, [("a/1.jpg", "b/1.jpg", 1), ("a/2.jpg", "b/2.jpg", np.int64(0)), ("a/3.jpg", "b/3.jpg", True)]
    )
    assert path.read_text() == "a/1.jpg, b/1.jpg, 1\na/2.jpg, b/2.jpg, 0\na/3.jpg, b/3.jpg, 1\n"
    pairs, problems = parse_pair_list(path)
    assert problems == [] and [pair.label for pair in pairs] == [1, 0, 1]
    write_pair_list(path, [("a/1.jpg", "b/1.jpg")])
    assert path.read_text() == "a/1.jpg, b/1.jpg\n"
    assert list(path.parent.iterdir()) == [path]


@pytest.mark.parametrize(
    "items, match",
    [
        ([("a.jpg", "b.jpg", 1), ("a.jpg", "b.jpg")], "mix labelled and unlabelled"),
        ([("a.jpg", "b.jpg", 2)], "label must be a boolean or 0/1"),
        ([("a.jpg", "b.jpg", 0.5)], "label must be a boolean or 0/1"),
        ([("a,1.jpg", "b.jpg", 1)], "without commas"),
        ([("a.jpg",)], "expected"),
        ([], "No pairs"),
    ],
)
def test_write_pair_list_rejects_bad_pairs(tmp_path, items, match):
    with pytest.raises(ValueError, match=match):
        write_pair_list(tmp_path / "list.txt", items)
    assert not (tmp_path / "list.txt").exists()


def test_write_result_file(tmp_path):
    path = tmp_path / "result.txt"
    write_result_file(path, [True, 0, np.int64(1), np.bool_(False), 1])
    assert path.read_bytes() == b"1\n0\n1\n0\n1\n"
    for bad in ([2], [0.7], ["1"], []):
        with pytest.raises(ValueError):
            write_result_file(tmp_path / "bad.txt", bad)
    assert not (tmp_path / "bad.txt").exists()
