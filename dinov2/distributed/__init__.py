"""Process-group set-up from torchrun or SLURM variables, or a single process.

NCCL on GPUs (one GPU per rank, chosen here and nowhere else), gloo on CPU.
"""

import datetime
import logging
import os
import subprocess

import torch
import torch.distributed as dist

logger = logging.getLogger("dinov2")

_TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def is_enabled() -> bool:
    """Whether a process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """Global rank (0 without a process group)."""
    return dist.get_rank() if is_enabled() else 0


def get_world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if is_enabled() else 1


def get_local_rank() -> int:
    """Rank within the node (0 without a process group)."""
    return int(os.environ.get("LOCAL_RANK", 0)) if is_enabled() else 0


def is_main_process() -> bool:
    """Whether this is global rank 0: the one that writes logs, checkpoints and results."""
    return get_rank() == 0


def barrier() -> None:
    """Wait for all ranks (no-op in a single process)."""
    if is_enabled():
        dist.barrier()


def device() -> torch.device:
    """This rank's device: its local GPU when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", get_local_rank() % torch.cuda.device_count())
    return torch.device("cpu")


def _slurm_master_address() -> str:
    nodelist = os.environ["SLURM_JOB_NODELIST"]
    try:
        hostnames = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist], check=True, capture_output=True, text=True
        ).stdout.split()
        return hostnames[0]
    except (OSError, subprocess.CalledProcessError):
        return nodelist.split(",")[0]


def _environment_from_slurm() -> dict[str, str] | None:
    if "SLURM_JOB_ID" not in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) <= 1:
        return None
    return {
        "RANK": os.environ["SLURM_PROCID"],
        "WORLD_SIZE": os.environ["SLURM_NTASKS"],
        "LOCAL_RANK": os.environ["SLURM_LOCALID"],
        "MASTER_ADDR": os.environ.get("MASTER_ADDR") or _slurm_master_address(),
        "MASTER_PORT": os.environ.get("MASTER_PORT") or str(20000 + int(os.environ["SLURM_JOB_ID"]) % 20000),
    }


def enable(timeout_minutes: int = 30) -> None:
    """Join the process group described by torchrun's or SLURM's variables; stay single-process otherwise.

    Safe to call twice. Sets this rank's CUDA device when GPUs are present.
    """
    if is_enabled():
        return
    if all(name in os.environ for name in _TORCHRUN_VARIABLES) and int(os.environ["WORLD_SIZE"]) > 1:
        variables = {name: os.environ[name] for name in _TORCHRUN_VARIABLES}
    else:
        variables = _environment_from_slurm()
    if variables is None:
        return
    os.environ.update(variables)
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(variables["LOCAL_RANK"]) % torch.cuda.device_count())
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=timeout_minutes))
    logger.info("Rank %d of %d joined a %s process group", get_rank(), get_world_size(), backend)


def disable() -> None:
    """Leave the process group, if any."""
    if is_enabled():
        dist.destroy_process_group()
