"""Jobs go through submitit to a real local SLURM cluster: multi-task runs, requeue on preemption and timeout."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import submitit

from tests.slurm_jobs import CountingTask, describe_task

if TYPE_CHECKING:
    from tests.slurm_cluster import LocalSlurmCluster

# The session-scoped `slurm_cluster` fixture (harmless if tests/conftest.py also lists this plugin).
pytest_plugins = ["tests.slurm_cluster"]

REPO_ROOT = Path(__file__).resolve().parents[1]

JOB_TIMEOUT_S = 60.0
QUEUE_GRACE_S = 5.0
NUM_STEPS = 12
STEPS_BEFORE_SIGNAL = 3


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str, cluster: LocalSlurmCluster) -> None:
    """Poll `condition` every 0.2 s; fail with the daemon logs if it is still false after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}\n{cluster.log_tails()}")
        time.sleep(0.2)


def job_logs(job: submitit.Job) -> str:
    """The job's stdout and stderr, for failure messages."""
    return f"--- stdout ---\n{job.stdout()}\n--- stderr ---\n{job.stderr()}"


def wait_for_result_file(job: submitit.Job, cluster: LocalSlurmCluster, timeout_s: float = JOB_TIMEOUT_S) -> None:
    """Wait until the job wrote its result pickle; fail early if it left the queue without one.

    Polling the file (not `job.done()`) avoids submitit's `sacct` calls, which fail without accounting.
    """
    deadline = time.monotonic() + timeout_s
    left_queue_at = None
    while not job.paths.result_pickle.exists():
        now = time.monotonic()
        if job.job_id in cluster.job_ids():
            left_queue_at = None
        elif left_queue_at is None:
            left_queue_at = now
        if now > deadline or (left_queue_at is not None and now - left_queue_at > QUEUE_GRACE_S):
            pytest.fail(f"job {job.job_id} gave no result file\n{job_logs(job)}\n{cluster.log_tails()}")
        time.sleep(0.2)


def slurm_executor(
    folder: Path, partition: str, tasks_per_node: int = 1, cpus_per_task: int = 1, timeout_min: int = 5
) -> submitit.AutoExecutor:
    """An AutoExecutor for one partition of the local cluster whose jobs start in the repository root."""
    executor = submitit.AutoExecutor(folder=folder)
    executor.update_parameters(
        timeout_min=timeout_min,
        nodes=1,
        tasks_per_node=tasks_per_node,
        cpus_per_task=cpus_per_task,
        slurm_partition=partition,
        # `python -m submitit.core._submit` puts the working directory on sys.path: `tests.*` imports.
        slurm_additional_parameters={"chdir": str(REPO_ROOT)},
    )
    return executor


def start_counting_task(
    cluster: LocalSlurmCluster, tmp_path: Path, cpus_per_task: int, timeout_min: int
) -> tuple[CountingTask, submitit.Job]:
    """Submit a CountingTask to the default partition and wait until it finished a few steps."""
    work_folder = tmp_path / "work"
    work_folder.mkdir()
    task = CountingTask(work_folder, num_steps=NUM_STEPS, step_s=0.3)
    executor = slurm_executor(
        tmp_path / "counting", cluster.partition, cpus_per_task=cpus_per_task, timeout_min=timeout_min
    )
    job = executor.submit(task)
    wait_until(lambda: task.read_progress() >= STEPS_BEFORE_SIGNAL, JOB_TIMEOUT_S, "steps before the signal", cluster)
    return task, job


def check_resumed_once(task: CountingTask, job: submitit.Job, case: str, timeouts_left: int) -> None:
    """The job checkpointed once, SLURM requeued it, and the second run went on from the saved step."""
    assert job.result() == NUM_STEPS, job_logs(job)
    events = task.read_events()
    assert [event["event"] for event in events] == ["start", "checkpoint", "start", "finish"], events
    first_start, checkpoint, resume, finish = events
    assert first_start["step"] == 0 and first_start["restart_count"] == 0
    assert checkpoint["step"] >= STEPS_BEFORE_SIGNAL
    assert resume["step"] == checkpoint["step"], "the resumed run must continue from the saved progress"
    assert resume["restart_count"] == 1, "SLURM must have requeued the same job"
    assert {event["job_id"] for event in events} == {job.job_id}
    assert finish["step"] == NUM_STEPS
    assert f"this job is {case}" in job.stderr(), job_logs(job)
    assert f"Requeued job {job.job_id} ({timeouts_left} remaining timeouts)" in job.stdout(), job_logs(job)


def test_auto_executor_runs_two_tasks_on_slurm(slurm_cluster: LocalSlurmCluster, tmp_path: Path) -> None:
    if slurm_cluster.cpus < 2:
        pytest.skip(f"two tasks need two CPUs; this machine has {slurm_cluster.cpus}")
    executor = slurm_executor(tmp_path, slurm_cluster.partition, tasks_per_node=2)
    assert executor.cluster == "slurm"

    job = executor.submit(describe_task)
    wait_for_result_file(job, slurm_cluster)
    tasks = job.results()

    assert len(tasks) == 2, job_logs(job)
    assert sorted(task["global_rank"] for task in tasks) == [0, 1]
    assert {task["num_tasks"] for task in tasks} == {2}
    assert {task["job_id"] for task in tasks} == {job.job_id}
    assert {task["hostname"] for task in tasks} == {slurm_cluster.node_name}
    assert {task["python"] for task in tasks} == {sys.executable}
    assert len({task["pid"] for task in tasks}) == 2


def test_preempted_job_checkpoints_requeues_and_resumes(slurm_cluster: LocalSlurmCluster, tmp_path: Path) -> None:
    # The counting job holds every CPU, so the urgent job can only start by preempting it.
    task, job = start_counting_task(slurm_cluster, tmp_path, cpus_per_task=slurm_cluster.cpus, timeout_min=60)
    urgent_executor = slurm_executor(
        tmp_path / "urgent", slurm_cluster.urgent_partition, cpus_per_task=slurm_cluster.cpus
    )
    urgent_job = urgent_executor.submit(describe_task)
    wait_for_result_file(urgent_job, slurm_cluster)
    wait_for_result_file(job, slurm_cluster)

    assert urgent_job.result()["job_id"] == urgent_job.job_id, job_logs(urgent_job)
    # submitit counts a signal as a timeout once the job ran min(80 %, limit - 10 min) of its 60 min.
    check_resumed_once(task, job, case="preempted", timeouts_left=3)


def test_timed_out_job_checkpoints_requeues_and_resumes(slurm_cluster: LocalSlurmCluster, tmp_path: Path) -> None:
    # With a 5 min limit any signal counts as a timeout; `_interrupt(timeout=True)` sends what SLURM
    # sends `signal_delay_s` before the limit: USR2 to the job's tasks (scancel --signal).
    task, job = start_counting_task(slurm_cluster, tmp_path, cpus_per_task=1, timeout_min=5)
    job._interrupt(timeout=True)
    wait_for_result_file(job, slurm_cluster)

    check_resumed_once(task, job, case="timed-out", timeouts_left=2)
