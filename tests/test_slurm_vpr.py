"""VPR commands submitted to SLURM through the project's own launcher (``dinov2.run.submit``).

The SLURM tests run on the real local cluster of ``tests/slurm_cluster.py`` (skipped, with the
reason, where it cannot start); the sbatch-script test uses a stand-in ``sbatch`` and runs anywhere.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import submitit
import torch

from dinov2.eval import vpr as vpr_eval
from dinov2.run.submit import CommandTask, add_launcher_args, executor_parameters, submit_or_run
from dinov2.utils.errors import InputError
from dinov2_vpr.data.synthetic import make_pair_dataset
from tests.conftest import REPO_ROOT
from tests.test_slurm_cluster import wait_for_result_file, wait_until
from tests.tiny_vpr import (
    IMAGE_SIZE,
    RESUMED_AT,
    SAVED_EPOCH,
    assert_same_heads,
    evaluation_options,
    load_heads,
    training_options,
)

if TYPE_CHECKING:
    from tests.slurm_cluster import LocalSlurmCluster

pytest_plugins = ["tests.slurm_cluster"]

# Enough epochs that a signal sent after the second one reaches a job that is still training.
EPOCHS = 40
EPOCHS_BEFORE_SIGNAL = 2
CPU_JOB = ["--ngpus", "0", "--tasks-per-node", "2", "--cpus-per-task", "1", "--timeout", "5"]
SUBMIT_TIMEOUT_S = 60.0
JOB_TIMEOUT_S = 120.0
SUBMITTED = re.compile(r"Submitted job (\d+)")
FAKE_JOB_ID = "4242"


def submit(module: str, options: list[str], env: dict[str, str] | None = None) -> str:
    """Run ``python -m module options`` (a submitting command) and return the job id it printed."""
    result = subprocess.run(
        [sys.executable, "-m", module, *options],
        cwd=REPO_ROOT,
        env=env or os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=SUBMIT_TIMEOUT_S,
    )
    match = SUBMITTED.search(result.stdout)
    assert result.returncode == 0 and match, f"{module} did not submit:\n{result.stdout}\n{result.stderr}"
    return match.group(1)


def wait_for_job(cluster: LocalSlurmCluster, output_dir: Path, job_id: str, num_tasks: int = 2) -> list:
    """Wait until the job finished and left the queue; the results of its tasks, rank order."""
    job = submitit.SlurmJob(folder=output_dir / "submitit", job_id=job_id, tasks=tuple(range(num_tasks)))
    wait_for_result_file(job, cluster, JOB_TIMEOUT_S)
    wait_until(lambda: job_id not in cluster.job_ids(), JOB_TIMEOUT_S, f"job {job_id} to leave the queue", cluster)
    return job.results()


def last_saved_epoch(run_dir: Path) -> int:
    """The epoch of the checkpoint ``last_checkpoint`` names (-1 before the first)."""
    pointer = run_dir / "checkpoints" / "last_checkpoint"
    match = re.search(r"epoch_(\d+)", pointer.read_text()) if pointer.exists() else None
    return int(match.group(1)) if match else -1


def run_interrupted_training(cluster: LocalSlurmCluster, options: list[str], output_dir: Path) -> tuple[str, list]:
    """Submit ``dinov2_vpr.run.train options`` as 2 CPU tasks, send it USR2 (what SLURM sends before the time
    limit) once ``EPOCHS_BEFORE_SIGNAL`` epochs are saved, and wait for it to end; its job id and task results."""
    job_id = submit("dinov2_vpr.run.train", ["--slurm", *CPU_JOB, "--partition", cluster.partition, *options])
    wait_until(
        lambda: last_saved_epoch(output_dir) >= EPOCHS_BEFORE_SIGNAL - 1, JOB_TIMEOUT_S, "the first epochs", cluster
    )
    signalled = cluster.run_client("scancel", "--signal=USR2", job_id)
    assert signalled.returncode == 0, signalled.stderr
    return job_id, wait_for_job(cluster, output_dir, job_id)


def assert_requeued_and_resumed_once(output_dir: Path, job_id: str, epochs: int) -> None:
    """The job signalled after ``EPOCHS_BEFORE_SIGNAL`` epochs was requeued by submitit, resumed once from the last
    checkpoint of its first run, and trained each later epoch of ``epochs`` once."""
    task_log = (output_dir / "submitit" / f"{job_id}_0_log.out").read_text()
    assert "this job is timed-out" in task_log and f"Requeued job {job_id}" in task_log, task_log
    log = (output_dir / "logs" / "log.txt").read_text()
    resumed = RESUMED_AT.findall(log)
    assert len(resumed) == 1, f"expected one resume, found {resumed}"
    resumed_from, resumed_at = int(resumed[0][0]), int(resumed[0][1])
    before, after = log.split("Resuming from", 1)
    # The signal may land between a checkpoint's write and its log line: the checkpoint then counts.
    last_logged = int(SAVED_EPOCH.findall(before)[-1])
    assert resumed_at == resumed_from + 1 and resumed_from in (last_logged, last_logged + 1)
    assert EPOCHS_BEFORE_SIGNAL <= resumed_at < epochs, "the signal must reach the job while it trains"
    assert [int(epoch) for epoch in SAVED_EPOCH.findall(after)] == list(range(resumed_at, epochs))


def requires_two_cpus(cluster: LocalSlurmCluster) -> None:
    if cluster.cpus < 2:
        pytest.skip(f"two CPU tasks need two CPUs; this machine has {cluster.cpus}")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return make_pair_dataset(tmp_path_factory.mktemp("slurm_data"), num_places=16, image_size=IMAGE_SIZE)


@pytest.fixture(scope="module")
def uninterrupted_run(
    slurm_cluster: LocalSlurmCluster, dataset: dict, tmp_path_factory: pytest.TempPathFactory
) -> dict:
    """A training submitted as 2 CPU tasks with ``dinov2_vpr.run.train --slurm``, run to the end."""
    requires_two_cpus(slurm_cluster)
    output_dir = tmp_path_factory.mktemp("uninterrupted")
    job_id = submit(
        "dinov2_vpr.run.train",
        ["--slurm", *CPU_JOB, "--partition", slurm_cluster.partition, *training_options(dataset, output_dir, EPOCHS)],
    )
    return {"output_dir": output_dir, "job_id": job_id, "results": wait_for_job(slurm_cluster, output_dir, job_id)}


def test_training_runs_as_two_cpu_tasks_on_slurm(uninterrupted_run: dict) -> None:
    output_dir, job_id, results = (
        uninterrupted_run["output_dir"],
        uninterrupted_run["job_id"],
        uninterrupted_run["results"],
    )
    script = (output_dir / "submitit" / f"{job_id}_submission.sh").read_text()
    assert "#SBATCH --ntasks-per-node=2" in script and "#SBATCH --partition=debug" in script, script
    assert "gpus" not in script and "export CUDA_VISIBLE_DEVICES=" in script, script

    # Both ranks ran main() to the end and agree on the all-reduced metrics.
    assert len(results) == 2 and results[0] == results[1]
    metrics = json.loads((output_dir / "train_metrics.json").read_text())
    assert len(metrics["history"]) == EPOCHS and metrics["best_epoch"] == results[0]["best_epoch"]
    head_file = torch.load(output_dir / "head.pth", weights_only=True)
    assert head_file["best_epoch"] == metrics["best_epoch"] and head_file["threshold"] == metrics["threshold"]
    last = torch.load(output_dir / "checkpoints" / f"epoch_{EPOCHS - 1:04d}.pth", weights_only=True)
    assert last["epoch"] == EPOCHS - 1 and last_saved_epoch(output_dir) == EPOCHS - 1

    # Each rank encoded its own half of the images; only rank 0 saved checkpoints and TensorBoard events.
    rank0_log = (output_dir / "logs" / "log.txt").read_text()
    rank1_log = (output_dir / "logs" / "log.txt.rank1").read_text()
    encoded = [int(re.search(r"this rank encodes (\d+)", log).group(1)) for log in (rank0_log, rank1_log)]
    assert min(encoded) > 0, encoded
    assert len(SAVED_EPOCH.findall(rank0_log)) == EPOCHS and "Saved checkpoint" not in rank1_log
    assert len(list((output_dir / "tensorboard").glob("events.out.tfevents.*"))) == 1
    for rank in (0, 1):
        assert f"global_rank={rank}(2)" in (output_dir / "submitit" / f"{job_id}_{rank}_log.out").read_text()


def test_interrupted_training_is_requeued_resumes_and_ends_with_the_same_head(
    slurm_cluster: LocalSlurmCluster, dataset: dict, uninterrupted_run: dict, tmp_path: Path
) -> None:
    output_dir = tmp_path / "interrupted"
    job_id, _ = run_interrupted_training(slurm_cluster, training_options(dataset, output_dir, EPOCHS), output_dir)
    assert_requeued_and_resumed_once(output_dir, job_id, EPOCHS)

    assert_same_heads(
        load_heads(output_dir, EPOCHS), load_heads(uninterrupted_run["output_dir"], EPOCHS), atol=1e-6, rtol=1e-5
    )
    history = json.loads((output_dir / "train_metrics.json").read_text())["history"]
    assert history == json.loads((uninterrupted_run["output_dir"] / "train_metrics.json").read_text())["history"]


def test_dinov2_run_eval_vpr_submits_the_in_place_evaluation(
    slurm_cluster: LocalSlurmCluster, dataset: dict, uninterrupted_run: dict, tmp_path: Path
) -> None:
    head = uninterrupted_run["output_dir"]
    job_id = submit(
        "dinov2.run.eval.vpr",
        [*CPU_JOB, "--partition", slurm_cluster.partition, *evaluation_options(dataset, head, tmp_path / "eval_%j")],
    )
    submitted_dir = tmp_path / f"eval_{job_id}"
    wait_for_job(slurm_cluster, submitted_dir, job_id)

    in_place_dir = tmp_path / "in_place"
    in_place = vpr_eval.main(vpr_eval.get_args_parser().parse_args(evaluation_options(dataset, head, in_place_dir)))
    submitted = json.loads((submitted_dir / "metrics.json").read_text())
    assert len(submitted["lists"]) == len(dataset["test_lists"]) == len(in_place["lists"])
    # Two ranks encoded the images of the submitted run, one here: the features agree to float rounding.
    assert_same_json(submitted, json.loads((in_place_dir / "metrics.json").read_text()), tolerance=1e-5)


def assert_same_json(actual: object, expected: object, tolerance: float, where: str = "metrics") -> None:
    """Equal JSON values, numbers within ``tolerance``."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and actual.keys() == expected.keys(), where
        for key in expected:
            assert_same_json(actual[key], expected[key], tolerance, f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), where
        for index, (left, right) in enumerate(zip(actual, expected)):
            assert_same_json(left, right, tolerance, f"{where}[{index}]")
    elif isinstance(expected, float):
        assert actual == pytest.approx(expected, abs=tolerance), where
    else:
        assert actual == expected, where


def fake_slurm_env(tmp_path: Path) -> dict[str, str]:
    """PATH with an ``sbatch`` that accepts any script as job 4242 (and an ``srun``, which submitit looks for)."""
    bin_dir = tmp_path / "fake_bin"
    bin_dir.mkdir()
    for name, body in (("sbatch", f'echo "Submitted batch job {FAKE_JOB_ID}"'), ("srun", "exit 1")):
        program = bin_dir / name
        program.write_text(f"#!/bin/sh\n{body}\n")
        program.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


@pytest.mark.parametrize(
    ("module", "command_options", "target"),
    [
        ("dinov2_vpr.run.train", ["--slurm"], "dinov2_vpr.run.train:main"),
        ("dinov2_vpr.run.eval", ["--slurm"], "dinov2_vpr.run.eval:main"),
        ("dinov2.run.eval.vpr", [], "dinov2.eval.vpr:main"),
    ],
)
def test_sbatch_script_for_two_nodes_of_eight_gpus(
    module: str, command_options: list[str], target: str, tmp_path: Path
) -> None:
    data = {"train_dir": tmp_path / "train", "image_root": tmp_path / "images", "test_lists": [tmp_path / "t.txt"]}
    output_dir = tmp_path / "run_%j"
    task_options = (
        training_options(data, output_dir, epochs=3)
        if module.endswith("train")
        else evaluation_options(data, tmp_path / "head.pth", output_dir)
    )
    launcher = [
        "--nodes",
        "2",
        "--gpus-per-node",
        "8",
        "--timeout",
        "1440",
        "--partition",
        "gpu8",
        "--use-volta32",
        "--comment",
        "vpr run",
        "--exclude",
        "node[3-4]",
    ]
    job_id = submit(module, [*command_options, *launcher, *task_options], env=fake_slurm_env(tmp_path))
    assert job_id == FAKE_JOB_ID

    folder = tmp_path / f"run_{FAKE_JOB_ID}" / "submitit"
    script = (folder / f"{FAKE_JOB_ID}_submission.sh").read_text()
    for line in (
        "--nodes=2",
        "--gpus-per-node=8",
        "--ntasks-per-node=8",
        "--cpus-per-task=10",
        "--time=1440",
        "--signal=USR2@90",
        "--partition=gpu8",
        "--constraint=volta32gb",
        "--comment='vpr run'",
        "--exclude='node[3-4]'",
        f"--output={tmp_path}/run_%j/submitit/%j_0_log.out",
    ):
        assert f"#SBATCH {line}\n" in script, f"#SBATCH {line} missing from\n{script}"
    assert "CUDA_VISIBLE_DEVICES" not in script
    assert f"-m submitit.core._submit {tmp_path}/run_%j/submitit" in script

    delayed = submitit.helpers.DelayedSubmission.load(folder / f"{FAKE_JOB_ID}_submitted.pkl")
    task = delayed.function
    assert isinstance(task, CommandTask) and task.target == target
    assert task.args.output_dir == str(output_dir) and task.args.nodes == 2 and task.args.ngpus == 8
    fresh = task.checkpoint().function
    assert isinstance(fresh, CommandTask) and fresh is not task and vars(fresh.args) == vars(task.args)


def launcher_args(*argv: str) -> argparse.Namespace:
    parser = add_launcher_args(argparse.ArgumentParser())
    parser.add_argument("--output-dir", default="out")
    return parser.parse_args(list(argv))


def test_launcher_defaults_and_partition_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DINOV2_VPR_PARTITION", "from_env")
    gpu = executor_parameters(launcher_args())
    assert (gpu["nodes"], gpu["gpus_per_node"], gpu["tasks_per_node"], gpu["cpus_per_task"]) == (1, 8, 8, 10)
    assert gpu["slurm_partition"] == "from_env"
    assert executor_parameters(launcher_args("--partition", "given"))["slurm_partition"] == "given"
    cpu = executor_parameters(launcher_args("--ngpus", "0"))
    assert (cpu["gpus_per_node"], cpu["tasks_per_node"], cpu["cpus_per_task"]) == (None, 1, 1)


@pytest.mark.parametrize("argv", [("--ngpus", "8", "--tasks-per-node", "4"), ("--nodes", "0"), ("--ngpus", "-1")])
def test_launcher_rejects_inconsistent_counts(argv: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match="--"):
        executor_parameters(launcher_args(*argv))


def test_job_id_pattern_needs_slurm() -> None:
    ran: list[argparse.Namespace] = []
    with pytest.raises(InputError, match="--slurm"):
        submit_or_run(launcher_args("--output-dir", "runs/%j"), ran.append)
    submit_or_run(launcher_args("--output-dir", "runs/plain"), ran.append)
    assert [args.output_dir for args in ran] == ["runs/plain"]
