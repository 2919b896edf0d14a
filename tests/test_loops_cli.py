"""Loop closures in a sequence: the report on controlled descriptors, positions in names, the command."""

import csv
import json
import math
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from dinov2_vpr.data.pairs import parse_pair_list
from dinov2_vpr.data.synthetic import make_sequence
from dinov2_vpr.descriptors import load_descriptor_files
from dinov2_vpr.loop_report import position_from_name, positions_from_names, write_loop_report
from dinov2_vpr.run import loops as loops_command

from .conftest import TINY_MODEL_ARGS, TINY_MODEL_OPTS


def _poses(poses_file) -> tuple[list[str], np.ndarray]:
    with open(poses_file, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [row["name"] for row in rows], np.array([[float(row["x"]), float(row["y"])] for row in rows])


@pytest.fixture(scope="module")
def drive(tmp_path_factory):
    """48 frames 10 m apart with 2 revisited stretches of 5 frames; positions also in the names."""
    root = tmp_path_factory.mktemp("sequence")
    return make_sequence(
        root, num_frames=48, revisit_segments=2, segment_length=5, image_size=(56, 56), positions_in_names=True
    )


@pytest.fixture(scope="module")
def short_drive(tmp_path_factory):
    """24 frames with one revisited stretch of 3 frames, for the command (which describes every image)."""
    root = tmp_path_factory.mktemp("short_sequence")
    return make_sequence(
        root, num_frames=24, revisit_segments=1, segment_length=3, image_size=(56, 56), positions_in_names=True
    )


def place_descriptors(num_frames: int, revisits: list[tuple[int, int]], seed: int = 0) -> np.ndarray:
    """A random unit vector per place (a revisit takes its first visit's) plus a little noise per frame."""
    rng = np.random.default_rng(seed)
    places = rng.normal(size=(num_frames, 64))
    for frame, first in revisits:
        places[frame] = places[first]
    noisy = places / np.linalg.norm(places, axis=1, keepdims=True) + rng.normal(scale=0.02, size=places.shape)
    return (noisy / np.linalg.norm(noisy, axis=1, keepdims=True)).astype(np.float32)


def test_candidates_are_exactly_the_known_revisits(drive, tmp_path):
    names, positions = _poses(drive["poses"])
    descriptors = place_descriptors(len(names), drive["revisits"])
    # 5 m: only a revisit (1 m of noise) is that close to an earlier frame; new places are 10 m apart.
    summary = write_loop_report(descriptors, names, tmp_path, 0.9, exclude_recent=3, positions=positions, radius=5.0)
    pairs, problems = parse_pair_list(tmp_path / "loop_candidates.txt")
    assert problems == []
    expected = {(names[frame], names[first]) for frame, first in drive["revisits"]}
    assert {(pair.query, pair.reference) for pair in pairs} == expected
    assert all(pair.label == 1 for pair in pairs)
    assert summary["candidates"] == len(drive["revisits"]) == 10 and summary["candidate_precision"] == 1.0
    metrics = summary["metrics"]
    assert metrics["true_loop_frames"] == 10 and metrics["correct_best_matches"] == 10
    assert metrics["average_precision"] == pytest.approx(1.0) and metrics["recall_at_100_precision"] == pytest.approx(
        1.0
    )
    assert metrics["precision_at_threshold"] == 1.0 and metrics["recall_at_threshold"] == 1.0
    assert json.loads((tmp_path / "loops.json").read_text()) == summary
    with Image.open(tmp_path / "similarity_matrix.png") as image:
        assert image.format == "PNG"


def test_recent_frames_top_k_and_an_empty_answer(drive, tmp_path):
    names, _ = _poses(drive["poses"])
    revisits = drive["revisits"]
    descriptors = place_descriptors(len(names), revisits)
    involved = {frame for pair in revisits for frame in pair}
    wait = next(start for start in range(len(names)) if involved.isdisjoint(range(start, start + 4)))
    descriptors[wait + 1 : wait + 4] = descriptors[wait]  # the car waits: 4 frames alike, too recent to be loops
    summary = write_loop_report(descriptors, names, tmp_path / "all", 0.9, exclude_recent=3)
    pairs, _ = parse_pair_list(tmp_path / "all" / "loop_candidates.txt")
    assert all(pair.label is None for pair in pairs) and "metrics" not in summary  # no ground truth: two columns
    assert {(pair.query, pair.reference) for pair in pairs} == {(names[f], names[j]) for f, j in revisits}
    summary = write_loop_report(descriptors, names, tmp_path / "waits", 0.9, exclude_recent=2)
    assert summary["candidates"] == len(revisits) + 1  # the last frame of the wait now matches the first
    top = write_loop_report(np.repeat(descriptors[:1], 12, axis=0), names[:12], tmp_path / "top", 0.9, 2, top_k=3)
    assert top["candidates"] == sum(min(3, max(0, i - 2)) for i in range(12))
    empty = write_loop_report(descriptors, names, tmp_path / "none", 1.01, exclude_recent=3)
    assert empty["candidates"] == 0 and (tmp_path / "none" / "loop_candidates.txt").read_text() == ""


def test_positions_from_names():
    assert position_from_name("seq/000012@543271.62@-4180181.15.jpg") == (543271.62, -4180181.15)
    assert position_from_name("@0543162.34@4180239.65@10@S@@@db00003@@@@@@@@.jpg") == (543162.34, 4180239.65)
    assert positions_from_names(["a@1@2.png", "b@3.5@4.png"]).tolist() == [[1, 2], [3.5, 4]]
    for bad in ("000012.jpg", "000012@east@north.jpg", "000012@nan@1.jpg"):
        with pytest.raises(ValueError, match="000012"):
            position_from_name(bad)


def _loops(drive, output, *extra):
    argv = [
        *TINY_MODEL_ARGS,
        "--images",
        str(drive["images"]),
        "--output-dir",
        str(output),
        "--zero-shot",
        "gem",
        *extra,
        "--opts",
        *TINY_MODEL_OPTS,
    ]
    return loops_command.main(loops_command.get_args_parser().parse_args(argv))


def test_command_candidates_are_consistent_with_the_saved_descriptors(short_drive, tmp_path, capsys):
    drive = short_drive
    exclude_recent, top_k, threshold = 4, 2, 0.0
    summary = _loops(
        drive,
        tmp_path,
        "--threshold",
        str(threshold),
        "--exclude-recent",
        str(exclude_recent),
        "--top-k",
        str(top_k),
        "--positions-from-names",
        "--save-descriptors",
    )
    descriptors, paths = load_descriptor_files(tmp_path)
    assert [path.name for path in paths] == _poses(drive["poses"])[0]
    similarity = descriptors.astype(np.float64) @ descriptors.T.astype(np.float64)
    with open(tmp_path / "loop_candidates.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    pairs, problems = parse_pair_list(tmp_path / "loop_candidates.txt")
    assert problems == [] and len(pairs) == len(rows) == summary["candidates"] > 0
    positions = positions_from_names(paths)
    for pair, row in zip(pairs, rows):
        i, j = int(row["query_frame"]), int(row["match_frame"])
        assert j < i - exclude_recent
        assert (
            (drive["images"] / pair.query).is_file() and pair.query == paths[i].name and pair.reference == paths[j].name
        )
        assert (
            float(row["similarity"]) == pytest.approx(similarity[i, j], abs=1e-5)
            and similarity[i, j] >= threshold - 1e-6
        )
        eligible = similarity[i, : i - exclude_recent]
        assert similarity[i, j] >= np.sort(eligible)[-min(top_k, len(eligible))] - 1e-5  # among the frame's top_k
        assert pair.label == int(math.dist(positions[i], positions[j]) <= 25.0)
    assert max(Counter(row["query_frame"] for row in rows).values()) <= top_k
    saved = json.loads((tmp_path / "loops.json").read_text())
    assert saved["metrics"]["frames"] == len(paths) and saved["model"]["zero_shot"] == "gem"
    assert "loop candidates" in capsys.readouterr().out
    # The same ground truth from the drive's poses.csv (name,x,y) gives the same metrics; the cache is reused.
    from_csv = _loops(
        drive,
        tmp_path / "csv",
        "--threshold",
        str(threshold),
        "--exclude-recent",
        str(exclude_recent),
        "--top-k",
        str(top_k),
        "--positions",
        str(drive["poses"]),
        "--cache-dir",
        str(tmp_path / "feature_cache"),
    )
    assert from_csv["metrics"] == pytest.approx(summary["metrics"])


def test_zero_shot_needs_a_threshold(short_drive, tmp_path):
    with pytest.raises(SystemExit, match="needs --threshold"):
        _loops(short_drive, tmp_path, "--exclude-recent", "3")
