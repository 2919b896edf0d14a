"""Small jobs that tests/test_slurm_cluster.py submits to the local SLURM cluster.

They live in an importable module (not in the test file) because the job unpickles them in a fresh
Python process started by SLURM.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

import submitit


def describe_task() -> dict[str, object]:
    """Where and as which task this call runs, as submitit and SLURM see it."""
    job_env = submitit.JobEnvironment()
    return {
        "job_id": job_env.job_id,
        "global_rank": job_env.global_rank,
        "local_rank": job_env.local_rank,
        "num_tasks": job_env.num_tasks,
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "python": sys.executable,
    }


def write_atomically(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same folder."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


class CountingTask:
    """Counts to `num_steps`, one step every `step_s` seconds, keeping its progress on disk.

    Each start and each checkpoint appends an event (a JSON line) to `events.jsonl`, so a test can
    see where a run began, where it was interrupted and where it ended.

    Args:
        folder: holds `progress.txt` (the last finished step) and `events.jsonl`.
        num_steps: the step count at which the task returns.
        step_s: seconds each step sleeps.
    """

    def __init__(self, folder: Path, num_steps: int, step_s: float) -> None:
        self.folder = Path(folder)
        self.num_steps = num_steps
        self.step_s = step_s

    @property
    def progress_path(self) -> Path:
        return self.folder / "progress.txt"

    @property
    def events_path(self) -> Path:
        return self.folder / "events.jsonl"

    def read_progress(self) -> int:
        """The number of steps finished so far by all runs of this task."""
        return int(self.progress_path.read_text()) if self.progress_path.exists() else 0

    def read_events(self) -> list[dict[str, object]]:
        """The events logged so far, oldest first."""
        if not self.events_path.exists():
            return []
        return [json.loads(line) for line in self.events_path.read_text().splitlines()]

    def _log_event(self, kind: str, step: int) -> None:
        event = {
            "event": kind,
            "step": step,
            "job_id": os.environ.get("SLURM_JOB_ID"),
            "restart_count": int(os.environ.get("SLURM_RESTART_COUNT", "0")),
        }
        with self.events_path.open("a") as events:
            events.write(json.dumps(event) + "\n")

    def __call__(self) -> int:
        step = self.read_progress()
        self._log_event("start", step)
        while step < self.num_steps:
            time.sleep(self.step_s)
            step += 1
            write_atomically(self.progress_path, str(step))
        self._log_event("finish", step)
        return step

    def checkpoint(self) -> submitit.helpers.DelayedSubmission:
        """Called by submitit on preemption or timeout: resubmit a fresh task reading the same folder."""
        self._log_event("checkpoint", self.read_progress())
        return submitit.helpers.DelayedSubmission(CountingTask(self.folder, self.num_steps, self.step_s))
