"""Loop closures in a sequence: the report on controlled descriptors, positions in names, the command."""

import csv
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from dinov2.utils.errors import InputError
from dinov2_vpr.data.pairs import parse_pair_list
from dinov2_vpr.data.positions import position_from_name, positions_from_names
from dinov2_vpr.data.synthetic import make_sequence
from dinov2_vpr.features.descriptors import load_descriptor_files
from dinov2_vpr.loops import OnlineLoopDetector, find_loop_candidates
from dinov2_vpr.loops.report import write_loop_report
from dinov2_vpr.loops.stream import STATE_FILE
from dinov2_vpr.run import loops as loops_command

from .conftest import REPO_ROOT, TINY_MODEL_ARGS, TINY_MODEL_OPTS


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
    with pytest.raises(InputError, match="needs --threshold"):
        _loops(short_drive, tmp_path, "--exclude-recent", "3")


def _follow(folder, output, *extra, opts=()):
    argv = [*TINY_MODEL_ARGS, "--follow", str(folder), "--output-dir", str(output), "--zero-shot", "gem"]
    argv += ["--exclude-recent", "3", "--top-k", "2", "--settle", "0", "--poll-interval", "0.02", *extra]
    return loops_command.main(loops_command.get_args_parser().parse_args([*argv, "--opts", *TINY_MODEL_OPTS, *opts]))


def _state(output) -> OnlineLoopDetector:
    return OnlineLoopDetector.load(output / STATE_FILE)


def test_follow_resumes_and_equals_the_offline_candidates(short_drive, tmp_path):
    names, _ = _poses(short_drive["poses"])
    images = short_drive["images"]
    # --opts vpr.eval.threshold is the threshold when --threshold is not given.
    first = _follow(
        images, tmp_path / "run", "--stop-after", "10", "--positions-from-names", opts=["vpr.eval.threshold=0.2"]
    )
    assert first["threshold"] == 0.2 and first["frames_this_run"] == 10 and first["frames"] == 10
    for name in ("loop_candidates.txt", "loop_candidates.csv"):  # rows written after the last save are cut on resume
        with open(tmp_path / "run" / name, "a") as handle:
            handle.write("half-written, row\n")
    second = _follow(
        images, tmp_path / "run", "--idle-timeout", "0.3", "--positions-from-names", opts=["vpr.eval.threshold=0.2"]
    )
    assert second["frames_this_run"] == len(names) - 10  # nothing encoded twice
    detector = _state(tmp_path / "run")
    assert detector.frame_ids == names and detector.threshold == 0.2
    # The stream's candidates are the offline search's on the descriptors it kept.
    expected = find_loop_candidates(detector.descriptors, 0.2, exclude_recent=3, top_k=2)
    pairs, problems = parse_pair_list(tmp_path / "run" / "loop_candidates.txt")
    assert problems == [] and len(pairs) == len(expected) == second["candidates"] > 0
    assert [(p.query, p.reference) for p in pairs] == [(names[c.query], names[c.match]) for c in expected]
    positions = positions_from_names(names)
    assert [p.label for p in pairs] == [int(math.dist(positions[c.query], positions[c.match]) <= 25) for c in expected]
    with open(tmp_path / "run" / "loop_candidates.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(int(r["query_frame"]), int(r["match_frame"])) for r in rows] == [(c.query, c.match) for c in expected]
    np.testing.assert_allclose([float(r["similarity"]) for r in rows], [c.similarity for c in expected], atol=2e-6)
    # Resuming with other settings is refused.
    with pytest.raises(InputError, match="exclude_recent 3 -> 4"):
        loops_command.main(
            loops_command.get_args_parser().parse_args(
                [
                    *TINY_MODEL_ARGS,
                    "--follow",
                    str(images),
                    "--output-dir",
                    str(tmp_path / "run"),
                    "--zero-shot",
                    "gem",
                    "--exclude-recent",
                    "4",
                    "--top-k",
                    "2",
                    "--threshold",
                    "0.2",
                    "--opts",
                    *TINY_MODEL_OPTS,
                ]
            )
        )


def test_follow_takes_frames_as_they_are_written_and_skips_corrupt_ones(short_drive, tmp_path):
    source = sorted(short_drive["images"].iterdir())[:8]
    folder = tmp_path / "incoming"
    folder.mkdir()

    def write_frames():
        for path in source[:3]:
            shutil.copy(path, folder / path.name)
        data = source[3].read_bytes()
        partial = folder / source[3].name
        partial.write_bytes(data[: len(data) // 3])
        future = time.time() + 3600
        os.utime(partial, (future, future))  # still being written: the stream waits for it, and for later frames
        (folder / "000003_broken.jpg").write_bytes(b"this is no JPEG")
        time.sleep(0.3)
        partial.write_bytes(data)
        os.utime(partial, (time.time() - 5, time.time() - 5))
        for path in source[4:]:
            shutil.copy(path, folder / path.name)
            time.sleep(0.05)

    writer = threading.Thread(target=write_frames)
    writer.start()
    try:
        summary = _follow(folder, tmp_path / "out", "--threshold", "0.0", "--idle-timeout", "1.5")
    finally:
        writer.join()
    assert summary["skipped_frames"] == ["000003_broken.jpg"] and summary["skipped"] == 1
    detector = _state(tmp_path / "out")
    assert detector.frame_ids == [path.name for path in source]
    # The frame written in two parts was read whole: its descriptor is the complete image's.
    from dinov2_vpr.models.descriptor import load_place_model

    model = load_place_model(
        config_file=TINY_MODEL_ARGS[1], random_backbone=True, zero_shot="gem", opts=TINY_MODEL_OPTS
    )
    np.testing.assert_allclose(detector.descriptors[3], model.describe(source[3])[0].numpy(), atol=1e-5)
    saved = json.loads((tmp_path / "out" / "loops.json").read_text())
    assert saved["skipped"] == 1 and saved["frames"] == 8 and saved["latency_ms"]["add"]["median"] is not None


def test_sigterm_stops_the_stream_between_frames_with_the_map_saved(short_drive, tmp_path):
    """What a job scheduler or ``kill`` sends: the command finishes its frame, saves, prints its summary, exits 0."""
    folder = tmp_path / "frames"
    folder.mkdir()
    frames = sorted(short_drive["images"].iterdir())
    for frame in frames[:6]:
        shutil.copy(frame, folder / frame.name)
    output = tmp_path / "run"
    argv = [*TINY_MODEL_ARGS, "--follow", str(folder), "--output-dir", str(output), "--zero-shot", "gem"]
    argv += ["--exclude-recent", "3", "--threshold", "0.2", "--settle", "0", "--poll-interval", "0.05"]
    argv += ["--idle-timeout", "120", "--save-every", "1", "--opts", *TINY_MODEL_OPTS]
    process = subprocess.Popen(
        [sys.executable, "-m", "dinov2_vpr.run.loops", *argv],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (output / STATE_FILE).exists() and time.monotonic() < deadline:
            time.sleep(0.05)  # saved after each frame (--save-every 1): the stream is running
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr and "Stop requested" in stdout
    detector = _state(output)
    assert 1 <= len(detector) <= 6 and len(detector) == len(set(detector.frame_ids))
    rows = (output / "loop_candidates.csv").read_text().splitlines()
    assert all(row.split(",")[0] in set(map(str, detector.frame_ids)) for row in rows[1:])
