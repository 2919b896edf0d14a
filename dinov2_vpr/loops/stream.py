"""Follow a folder that a SLAM system writes frames into: describe each new frame, find its loops, append them.

:func:`follow_folder` takes the frames in name order as they appear (a frame counts as written
once it has not changed for ``settle_s`` seconds), adds each to an
:class:`~dinov2_vpr.loops.online.OnlineLoopDetector`, and appends its candidates to
``loop_candidates.txt`` (pair list) and ``loop_candidates.csv``, flushed after every frame. The
detector's state (with this stream's progress in its metadata) is saved every ``save_every``
frames and when the stream stops, so a second run goes on where the first stopped: rows appended
after the last save are cut off and their frames processed again, so nothing is lost or repeated.
"""

import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dinov2.utils.errors import InputError
from dinov2_vpr.data.images import list_images
from dinov2_vpr.loops.online import ImageDescriber, OnlineLoopDetector
from dinov2_vpr.loops.report import CANDIDATES_CSV, PAIR_LIST_FILE, candidates_csv_text
from dinov2_vpr.loops.sequence import LoopCandidate

logger = logging.getLogger("dinov2")

STATE_FILE = "loop_state.npz"
# Per-frame steps timed by the stream.
STEPS = ("read", "describe", "add", "total")

PositionOf = Callable[[str], tuple[float, float] | None]


@dataclass(frozen=True)
class StreamOptions:
    """When the stream looks, waits, saves and stops.

    Attributes:
        poll_s: seconds between looks at the folder when no frame is ready.
        settle_s: a frame is taken once it has not been modified for this long (0 when frames are
            renamed into the folder complete).
        idle_timeout_s: stop once no new frame has arrived for this long (None: never).
        stop_after: stop after this many frames in this run (None: never).
        save_every: save the state every this many frames (and always when stopping).
        log_every_s: seconds between progress lines.
    """

    poll_s: float = 0.2
    settle_s: float = 0.5
    idle_timeout_s: float | None = None
    stop_after: int | None = None
    save_every: int = 100
    log_every_s: float = 10.0

    def __post_init__(self) -> None:
        if self.poll_s <= 0 or self.settle_s < 0 or self.save_every < 1 or self.log_every_s <= 0:
            raise InputError(
                f"Stream options out of range: poll {self.poll_s} s (> 0), settle {self.settle_s} s (>= 0), "
                f"save every {self.save_every} frames (>= 1), log every {self.log_every_s} s (> 0)"
            )
        if self.idle_timeout_s is not None and self.idle_timeout_s <= 0:
            raise InputError(f"--idle-timeout must be positive; got {self.idle_timeout_s}")
        if self.stop_after is not None and self.stop_after < 1:
            raise InputError(f"--stop-after must be at least 1; got {self.stop_after}")


class CandidateFiles:
    """``loop_candidates.txt`` and ``.csv`` opened for appending, cut back to the sizes of the last saved state."""

    def __init__(self, output_dir: Path, sizes: dict[str, int] | None, radius: float | None) -> None:
        self.paths = {"pair_list": output_dir / PAIR_LIST_FILE, "csv": output_dir / CANDIDATES_CSV}
        self.radius = radius  # with ground truth: the largest distance of a true loop; None without
        output_dir.mkdir(parents=True, exist_ok=True)
        self._files = {}
        for key, path in self.paths.items():
            size = (sizes or {}).get(key, 0)
            if sizes is not None and (not path.is_file() or path.stat().st_size < size):
                raise InputError(
                    f"{path} is shorter than when the loop state was saved ({size} bytes): the output folder was "
                    f"changed; delete {output_dir / STATE_FILE} to start afresh"
                )
            file = open(path, "r+b" if path.is_file() else "wb")  # noqa: SIM115 (closed in close())
            file.truncate(size)
            file.seek(size)
            self._files[key] = file
        if self._files["csv"].tell() == 0:
            self._write("csv", candidates_csv_text([], radius is not None))

    def _write(self, key: str, text: str) -> None:
        self._files[key].write(text.encode("utf-8"))

    def append(self, candidates: list[LoopCandidate], rows: dict[str, int], distances: list[float] | None) -> None:
        """Append one frame's candidates (``rows``: frame id to frame number) and flush both files to the OS."""
        pairs, csv_rows = [], []
        for index, candidate in enumerate(candidates):
            fields = [str(candidate.query), str(candidate.match)]
            csv_row = [rows[candidate.query], rows[candidate.match], *fields, f"{candidate.similarity:.6f}"]
            if distances is not None:
                label = int(distances[index] <= self.radius)
                fields.append(str(label))
                csv_row += [f"{distances[index]:.3f}", label]
            pairs.append(", ".join(fields) + "\n")
            csv_rows.append(csv_row)
        if candidates:
            self._write("pair_list", "".join(pairs))
            self._write("csv", candidates_csv_text(csv_rows, self.radius is not None, header=False))
        for file in self._files.values():
            file.flush()

    def sizes(self) -> dict[str, int]:
        """Bytes written so far (after fsync), recorded in the saved state."""
        for file in self._files.values():
            file.flush()
            os.fsync(file.fileno())
        return {key: file.tell() for key, file in self._files.items()}

    def close(self) -> None:
        for file in self._files.values():
            file.close()


@dataclass
class _Progress:
    """What a stream has done, kept in the detector's metadata."""

    skipped: list[str]
    candidates: int

    @classmethod
    def of(cls, detector: OnlineLoopDetector) -> "_Progress":
        stream = detector.metadata.get("stream", {})
        return cls(list(stream.get("skipped", [])), int(stream.get("candidates", 0)))


def _frame_name(path: Path, folder: Path) -> str:
    return path.relative_to(folder).as_posix()


def _read_frame(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def _process_frame(
    path: Path,
    name: str,
    detector: OnlineLoopDetector,
    model: ImageDescriber,
    files: CandidateFiles,
    rows: dict[str, int],
    progress: _Progress,
    position_of: PositionOf | None,
) -> tuple[float, float, float, float] | None:
    """Read, describe and add one frame, append its candidates; the seconds of each step, or None if skipped."""
    start = time.perf_counter()
    position = position_of(name) if position_of is not None else None
    reason = None
    if position_of is not None and position is None:
        reason = "no ground-truth position for it"
    elif any(char in name for char in ",\r\n"):
        reason = "its name holds a comma or a line break, which the pair list cannot hold"
    else:
        try:
            image = _read_frame(path)
            read = time.perf_counter()
            descriptor = np.asarray(model.describe([image]), dtype=np.float32)
        except (OSError, ValueError, SyntaxError) as error:
            reason = f"unreadable ({error})"
    if reason is not None:
        logger.warning("Skipping frame %s: %s", name, reason)
        progress.skipped.append(name)
        return None
    described = time.perf_counter()
    candidates = detector.add(name, descriptor=descriptor, position=position)
    added = time.perf_counter()
    rows[name] = len(rows)
    distances = None
    if position_of is not None:
        distances = [math.dist(position, detector.position(candidate.match)) for candidate in candidates]
    files.append(candidates, rows, distances)
    progress.candidates += len(candidates)
    finished = time.perf_counter()
    return read - start, described - read, added - described, finished - start


def follow_folder(
    folder: str | Path,
    detector: OnlineLoopDetector,
    model: ImageDescriber,
    output_dir: str | Path,
    options: StreamOptions,
    position_of: PositionOf | None = None,
    radius: float = 25.0,
) -> dict:
    """Process the frames of ``folder`` in name order as they appear, until a stop condition holds.

    Args:
        folder: the folder the frames are written to (searched recursively, natural name order).
        detector: the detector to add frames to (fresh, or loaded from ``output_dir``'s state).
        model: describes each frame.
        output_dir: where the candidate files and ``loop_state.npz`` go.
        options: polling, stopping and saving.
        position_of: ground truth, a frame name's (x, y) or None; with it the files label each candidate.
        radius: largest distance (metres) of a true loop.

    Returns:
        The run's summary: frames, candidates, skipped frames, frames/s and per-frame latencies (ms).
    """
    folder, output_dir = Path(folder), Path(output_dir)
    progress = _Progress.of(detector)
    stream_state = detector.metadata.get("stream")
    files = CandidateFiles(
        output_dir, stream_state["files"] if stream_state else None, radius if position_of is not None else None
    )
    handled = set(detector.frame_ids) | set(progress.skipped)
    rows = {frame_id: number for number, frame_id in enumerate(detector.frame_ids)}
    timings: dict[str, list[float]] = {step: [] for step in STEPS}
    started = last_arrival = last_log = time.perf_counter()
    done = unsaved = 0
    known: set[str] = set()

    def save() -> None:
        detector.metadata["stream"] = {
            "skipped": progress.skipped,
            "candidates": progress.candidates,
            "files": files.sizes(),
        }
        detector.save(output_dir / STATE_FILE)

    try:
        with _stop_requests() as stop_requested:
            while (options.stop_after is None or done < options.stop_after) and not stop_requested():
                try:
                    paths = [path for path in list_images(folder) if _frame_name(path, folder) not in handled]
                except FileNotFoundError:
                    paths = []
                now = time.time()
                names = [_frame_name(path, folder) for path in paths]
                if not known.issuperset(names):
                    known.update(names)
                    last_arrival = time.perf_counter()
                processed_any = False
                for path, name in zip(paths, names):
                    if (options.stop_after is not None and done >= options.stop_after) or stop_requested():
                        break
                    try:
                        modified = path.stat().st_mtime
                    except FileNotFoundError:
                        continue  # removed (or renamed) since listed
                    if now - modified < options.settle_s:
                        break  # still being written: later frames wait for it
                    handled.add(name)
                    done += 1
                    processed_any = True
                    times = _process_frame(path, name, detector, model, files, rows, progress, position_of)
                    if times is not None:
                        for step, seconds in zip(STEPS, times):
                            timings[step].append(seconds)
                    unsaved += 1
                    if unsaved >= options.save_every:
                        save()
                        unsaved = 0
                    if time.perf_counter() - last_log >= options.log_every_s:
                        last_log = time.perf_counter()
                        _log_progress(len(detector), done, last_log - started, timings)
                if processed_any:
                    last_arrival = time.perf_counter()
                    continue
                if options.idle_timeout_s is not None and time.perf_counter() - last_arrival >= options.idle_timeout_s:
                    logger.info("No new frame for %.1f s: stopping", options.idle_timeout_s)
                    break
                time.sleep(options.poll_s)
            if stop_requested():
                logger.info("Stop requested (Ctrl-C or SIGTERM): stopping after %d frames", done)
    finally:
        save()
        files.close()
    elapsed = time.perf_counter() - started
    summary = {
        "frames": len(detector),
        "frames_this_run": done,
        "added_this_run": len(timings["total"]),
        "skipped": len(progress.skipped),
        "skipped_frames": progress.skipped,
        "candidates": progress.candidates,
        "seconds": elapsed,
        "frames_per_s": len(timings["total"]) / elapsed if elapsed > 0 else 0.0,
        "latency_ms": {step: _percentiles(values) for step, values in timings.items()},
    }
    _log_progress(len(detector), done, elapsed, timings)
    return summary


@contextmanager
def _stop_requests() -> Iterator[Callable[[], bool]]:
    """Ctrl-C (SIGINT) and SIGTERM (a job scheduler, ``kill``) ask the stream to stop between two frames.

    Yields a function telling whether a stop was asked. A frame in hand is finished first, so the map
    and the candidate files agree when the state is saved. Outside the main thread signals cannot be
    handled, and nothing changes.
    """
    requested = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield requested.is_set
        return
    previous = {number: signal.signal(number, lambda *_: requested.set()) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield requested.is_set
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _percentiles(seconds: list[float]) -> dict[str, float | None]:
    if not seconds:
        return {"median": None, "p99": None}
    milliseconds = np.asarray(seconds) * 1000
    return {"median": float(np.median(milliseconds)), "p99": float(np.percentile(milliseconds, 99))}


def _log_progress(map_size: int, done: int, elapsed: float, timings: dict[str, list[float]]) -> None:
    added = len(timings["total"])
    medians = ", ".join(f"{step} {_percentiles(timings[step][-1000:])['median'] or 0:.1f}" for step in STEPS)
    logger.info(
        "%d frames in the map; this run %d frames (%d added), %.2f frames/s; median latency ms (last 1000): %s",
        map_size,
        done,
        added,
        added / elapsed if elapsed > 0 else 0.0,
        medians,
    )
