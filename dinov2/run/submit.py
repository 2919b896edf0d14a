"""The one submitit launcher: any command's ``main(args)`` runs as a checkpointable SLURM job.

A command adds the launcher options to its parser with :func:`add_launcher_args` and ends with
``submit_or_run(args, main)``. Without ``--slurm`` that runs ``main(args)`` here (one process, or
one rank under torchrun). With ``--slurm`` it submits a :class:`CommandTask`, which runs
``main(args)`` in every SLURM task; ``main`` joins the process group from SLURM's variables
(``dinov2.distributed.enable``). ``%j`` in ``--output-dir`` becomes the job id.

On a timeout or a preemption SLURM sends ``USR2``; submitit's handler on rank 0 calls
:meth:`CommandTask.checkpoint`, which returns a fresh task with the same arguments, and requeues
the job under the same id. The requeued task runs ``main(args)`` again, and the command resumes
from the last checkpoint in its output folder: all state lives on disk, none in the pickle.
"""

import argparse
import copy
import importlib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import submitit

from dinov2.utils.errors import InputError

# The partition when --partition is not given; without either, SLURM's default partition.
PARTITION_VARIABLE = "DINOV2_VPR_PARTITION"
JOB_ID_PATTERN = "%j"
# submitit's pickles, sbatch script and per-task logs go to <output-dir>/submitit.
SUBMITIT_FOLDER = "submitit"
DEFAULT_GPUS_PER_NODE = 8
DEFAULT_TIMEOUT_MIN = 2800
CPUS_PER_GPU_TASK = 10
VOLTA32_CONSTRAINT = "volta32gb"
# How often a job may time out and be requeued (preemptions do not count).
MAX_TIMEOUT_REQUEUES = 30


def add_launcher_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--slurm`` and the DINOv2-style SLURM options to ``parser``; returns it."""
    group = parser.add_argument_group("SLURM launcher (submitit)")
    group.add_argument("--slurm", action="store_true", help="Submit the command to SLURM instead of running it here")
    group.add_argument(
        "--ngpus",
        "--gpus",
        "--gpus-per-node",
        dest="ngpus",
        type=int,
        default=DEFAULT_GPUS_PER_NODE,
        help="GPUs per node, one task (rank) each; 0: CPU tasks with the gloo backend",
    )
    group.add_argument("--nodes", type=int, default=1, help="Number of nodes")
    group.add_argument("--timeout", type=int, default=DEFAULT_TIMEOUT_MIN, help="Time limit of the job in minutes")
    group.add_argument(
        "--partition", help=f"SLURM partition (default: ${PARTITION_VARIABLE}, else the cluster's default partition)"
    )
    group.add_argument("--use-volta32", action="store_true", help=f"Only nodes with the {VOLTA32_CONSTRAINT} feature")
    group.add_argument("--comment", default="", help="Comment attached to the job")
    group.add_argument("--exclude", default="", help="Nodes to leave out (a SLURM node list)")
    group.add_argument(
        "--tasks-per-node", type=int, help="Tasks (ranks) per node (default: --ngpus, or 1 with --ngpus 0)"
    )
    group.add_argument(
        "--cpus-per-task", type=int, help=f"CPUs per task (default: {CPUS_PER_GPU_TASK} with GPUs, 1 with --ngpus 0)"
    )
    return parser


def executor_parameters(args: argparse.Namespace) -> dict[str, Any]:
    """submitit ``AutoExecutor`` parameters for the launcher options in ``args``.

    Raises:
        ValueError: a count is out of range, or GPU tasks would not have one GPU each.
    """
    tasks_per_node = args.tasks_per_node or max(args.ngpus, 1)
    cpus_per_task = args.cpus_per_task or (CPUS_PER_GPU_TASK if args.ngpus else 1)
    if args.ngpus < 0 or args.nodes < 1 or tasks_per_node < 1 or cpus_per_task < 1:
        raise ValueError(
            f"Launcher counts out of range: --ngpus {args.ngpus} (0 or more), --nodes {args.nodes}, "
            f"--tasks-per-node {tasks_per_node}, --cpus-per-task {cpus_per_task} (1 or more)"
        )
    if args.ngpus and tasks_per_node != args.ngpus:
        raise ValueError(
            f"--tasks-per-node {tasks_per_node} with --ngpus {args.ngpus}: every task drives one GPU, so give "
            "the same number for both (or --ngpus 0 for CPU tasks)"
        )
    # Threads per task as SLURM allots them (unless set by the user); CPU jobs see no GPU, so they use gloo.
    setup = [f"export OMP_NUM_THREADS=${{OMP_NUM_THREADS:-{cpus_per_task}}}"]
    if not args.ngpus:
        setup.append("export CUDA_VISIBLE_DEVICES=")
    return {
        "nodes": args.nodes,
        "tasks_per_node": tasks_per_node,
        "cpus_per_task": cpus_per_task,
        "gpus_per_node": args.ngpus or None,
        "timeout_min": args.timeout,
        "slurm_partition": args.partition or os.environ.get(PARTITION_VARIABLE) or None,
        "slurm_constraint": VOLTA32_CONSTRAINT if args.use_volta32 else None,
        "slurm_comment": args.comment or None,
        "slurm_exclude": args.exclude or None,
        "slurm_setup": setup,
    }


def _target_name(main: Callable[[argparse.Namespace], Any]) -> str:
    """``module:function`` of ``main``, importable in the job (``__main__`` becomes the ``-m`` module's name)."""
    module = main.__module__
    if module == "__main__":
        spec = getattr(sys.modules["__main__"], "__spec__", None)
        if spec is None:
            raise RuntimeError("Start the command as `python -m <module>` so that SLURM jobs can import its main()")
        module = spec.name
    return f"{module}:{main.__qualname__}"


def _load_target(target: str) -> Callable[[argparse.Namespace], Any]:
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


class CommandTask:
    """A command's ``main(args)`` as a checkpointable submitit task.

    Args:
        target: ``module:function`` of the command's main.
        args: its parsed arguments; ``%j`` in ``args.output_dir`` stands for the job id.
    """

    def __init__(self, target: str, args: argparse.Namespace) -> None:
        self.target = target
        self.args = args

    def __call__(self) -> Any:
        """Run ``main`` on a copy of the arguments (kept pristine for a requeue); returns its result."""
        args = copy.deepcopy(self.args)
        args.output_dir = args.output_dir.replace(JOB_ID_PATTERN, str(submitit.JobEnvironment().job_id))
        return _load_target(self.target)(args)

    def checkpoint(self) -> submitit.helpers.DelayedSubmission:
        """Called by submitit before a requeue: the same command, which resumes from its checkpoints on disk."""
        return submitit.helpers.DelayedSubmission(CommandTask(self.target, self.args))


def submit_job(
    args: argparse.Namespace, main: Callable[[argparse.Namespace], Any], name: str | None = None
) -> submitit.Job:
    """Submit ``main(args)`` to SLURM with the launcher options in ``args``; prints the job id and folders.

    Args:
        args: the command's arguments, with those of :func:`add_launcher_args` and ``output_dir``.
        main: the command's entry point; a module-level function (of a ``python -m`` module).
        name: the job name (default: the command's module).

    Raises:
        SystemExit: SLURM's ``srun``/``sbatch`` are not on PATH.
    """
    target = _target_name(main)
    args = copy.deepcopy(args)
    args.output_dir = os.path.abspath(args.output_dir)
    folder = Path(args.output_dir) / SUBMITIT_FOLDER
    try:
        executor = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=MAX_TIMEOUT_REQUEUES)
    except RuntimeError as error:
        raise InputError(
            f"--slurm needs SLURM's srun and sbatch on PATH ({error}); without SLURM run the command "
            "without --slurm, or under torchrun --nproc_per_node=N"
        ) from None
    executor.update_parameters(name=name or target.split(":")[0], **executor_parameters(args))
    job = executor.submit(CommandTask(target, args))
    print(
        f"Submitted job {job.job_id} ({target}, {job.num_tasks} task(s)); "
        f"output: {args.output_dir.replace(JOB_ID_PATTERN, job.job_id)}; task logs: {job.paths.folder}"
    )
    return job


def submit_or_run(args: argparse.Namespace, main: Callable[[argparse.Namespace], Any]) -> None:
    """With ``args.slurm`` submit ``main(args)`` to SLURM, else run it here (one process or one torchrun rank)."""
    if args.slurm:
        submit_job(args, main)
        return
    if JOB_ID_PATTERN in args.output_dir:
        raise InputError(f"{JOB_ID_PATTERN} in --output-dir stands for the SLURM job id: it needs --slurm")
    main(args)
