"""Place training (SALAD recipe) submitted to SLURM with ``dinov2_vpr.run.train --slurm`` as 2 CPU tasks.

Runs on the real local cluster of ``tests/slurm_cluster.py`` (skipped, with the reason, where it cannot start).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from tests import test_place_training as place_training
from tests.test_slurm_vpr import CPU_JOB, last_saved_epoch, requires_two_cpus, submit, wait_for_job

if TYPE_CHECKING:
    from tests.slurm_cluster import LocalSlurmCluster

pytest_plugins = ["tests.slurm_cluster"]

EPOCHS = 2
# SALAD's dropout (0.3) stays on: its masks follow the global batch, not the ranks.
OPTS = (f"vpr.train.epochs={EPOCHS}", "vpr.train.trunk_cache_dtype=fp32")

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
