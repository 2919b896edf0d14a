"""Place training (SALAD recipe) submitted to SLURM with ``dinov2_vpr.run.train --slurm`` as 2 CPU tasks.

Runs on the real local cluster of ``tests/slurm_cluster.py`` (skipped, with the reason, where it cannot start).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch

from tests import test_place_training as place_training
from tests.test_slurm_vpr import (
    CPU_JOB,
    assert_requeued_and_resumed_once,
    last_saved_epoch,
    requires_two_cpus,
    run_interrupted_training,
    submit,
    wait_for_job,
)

if TYPE_CHECKING:
    from tests.slurm_cluster import LocalSlurmCluster

pytest_plugins = ["tests.slurm_cluster"]

EPOCHS = 2
# SALAD's dropout (0.3) stays on: its masks follow the global batch, not the ranks.
OPTS = (f"vpr.train.epochs={EPOCHS}", "vpr.train.trunk_cache_dtype=fp32")
# Enough epochs (under a second each here) that a signal sent after the second one reaches a job still training.
INTERRUPTED_EPOCHS = 20

# Wall-clock measures in each history entry: every rank times its own epochs.
TIMINGS = ("train_seconds", "images_per_s")

# The small generated places and validation benchmark of the place-training tests (a module fixture).
data = place_training.data


def without_timings(metrics: dict) -> dict:
    """``metrics`` with the per-rank timings left out of its history entries."""
    history = [{key: value for key, value in entry.items() if key not in TIMINGS} for entry in metrics["history"]]
    return {**metrics, "history": history}


def test_place_training_runs_as_two_cpu_tasks_on_slurm_and_trains_the_model_of_one_process(
    slurm_cluster: LocalSlurmCluster, data: dict, tmp_path: Path
) -> None:
    requires_two_cpus(slurm_cluster)
    output_dir = tmp_path / "slurm"
    argv = place_training._argv(data, "salad", output_dir, *OPTS)
    job_id = submit("dinov2_vpr.run.train", ["--slurm", *CPU_JOB, "--partition", slurm_cluster.partition, *argv])
    results = wait_for_job(slurm_cluster, output_dir, job_id)

    script = (output_dir / "submitit" / f"{job_id}_submission.sh").read_text()
    assert "#SBATCH --ntasks-per-node=2" in script, script
    # Both ranks ran main() to the end and agree on the metrics (all but their own timings).
    assert len(results) == 2 and without_timings(results[0]) == without_timings(results[1])
    metrics = json.loads((output_dir / "train_metrics.json").read_text())
    assert len(metrics["history"]) == EPOCHS and metrics["best_epoch"] == results[0]["best_epoch"]
    assert (output_dir / "model.pth").is_file()
    assert (output_dir / "checkpoints" / f"epoch_{EPOCHS - 1:04d}.pth").is_file()
    assert last_saved_epoch(output_dir) == EPOCHS - 1
    # Only rank 0 saved checkpoints.
    assert "Saved checkpoint" in (output_dir / "logs" / "log.txt").read_text()
    assert "Saved checkpoint" not in (output_dir / "logs" / "log.txt.rank1").read_text()
    for rank in (0, 1):
        assert f"global_rank={rank}(2)" in (output_dir / "submitit" / f"{job_id}_{rank}_log.out").read_text()

    # One process here, on the trunk tokens the SLURM run cached, trains the same model.
    single = tmp_path / "single"
    place_training._train(data, "salad", single, *OPTS, f"vpr.features.cache_dir={output_dir / 'feature_cache'}")
    assert "Trunk tokens: 0 of" in (single / "logs" / "log.txt").read_text()
    place_training._assert_same_states(
        place_training._model_state(output_dir), place_training._model_state(single), atol=1e-5, rtol=1e-4
    )
    assert torch.load(output_dir / "model.pth", weights_only=True)["best_epoch"] == metrics["best_epoch"]


def test_interrupted_place_training_is_requeued_resumes_and_trains_the_model_of_one_process(
    slurm_cluster: LocalSlurmCluster, data: dict, tmp_path: Path
) -> None:
    requires_two_cpus(slurm_cluster)
    output_dir = tmp_path / "interrupted"
    opts = (f"vpr.train.epochs={INTERRUPTED_EPOCHS}", *OPTS[1:])
    argv = place_training._argv(data, "salad", output_dir, *opts)
    job_id, results = run_interrupted_training(slurm_cluster, argv, output_dir)

    assert_requeued_and_resumed_once(output_dir, job_id, INTERRUPTED_EPOCHS)
    assert len(results) == 2 and without_timings(results[0]) == without_timings(results[1])
    # The requeued job read the trunk tokens the first one had cached.
    log = (output_dir / "logs" / "log.txt").read_text()
    assert re.findall(r"Trunk tokens: (\d+) of", log)[1:] == ["0"], log

    # One process here, on the trunk tokens the SLURM run cached, trains the same model without a break.
    single = tmp_path / "single"
    place_training._train(data, "salad", single, *opts, f"vpr.features.cache_dir={output_dir / 'feature_cache'}")
    place_training._assert_same_states(
        place_training._model_state(output_dir), place_training._model_state(single), atol=1e-5, rtol=1e-4
    )
    # model.pth holds the best epoch, maybe one before the signal: the last epochs' states agree too.
    last = f"epoch_{INTERRUPTED_EPOCHS - 1:04d}.pth"
    place_training._assert_same_states(
        torch.load(output_dir / "checkpoints" / last, weights_only=True)["model"],
        torch.load(single / "checkpoints" / last, weights_only=True)["model"],
        atol=1e-5,
        rtol=1e-4,
    )
    metrics = json.loads((output_dir / "train_metrics.json").read_text())
    single_metrics = json.loads((single / "train_metrics.json").read_text())
    assert len(metrics["history"]) == INTERRUPTED_EPOCHS and metrics["best_epoch"] == single_metrics["best_epoch"]
    # The losses the two ranks all-reduce differ from one process's in the last float bits.
    expected = [pytest.approx(entry, abs=1e-5) for entry in without_timings(single_metrics)["history"]]
    assert without_timings(metrics)["history"] == expected
