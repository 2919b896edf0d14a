"""A real single-node SLURM cluster on localhost, for tests of the submitit submission path.

`LocalSlurmCluster` writes a `slurm.conf` into a temporary folder (state, spool, pid and log files
live there too), starts `munged` if needed, then `slurmctld` and `slurmd`, and waits until the node
is idle. The `slurm_cluster` pytest fixture starts one cluster per test session; make it visible
with `pytest_plugins = ["tests.slurm_cluster"]` in `tests/conftest.py`.

Needs root and the Debian packages named in `INSTALL_COMMAND`.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Self

import pytest

INSTALL_COMMAND = "apt-get install -y slurmctld slurmd slurm-client munge"
REQUIRED_PROGRAMS = (
    "munge",
    "munged",
    "slurmctld",
    "slurmd",
    "sinfo",
    "squeue",
    "sbatch",
    "srun",
    "scontrol",
    "scancel",
)
MUNGE_SOCKET_DIR = Path("/run/munge")
PARTITION = "debug"
# Jobs in this partition preempt (requeue) jobs in the default one, after a grace time.
URGENT_PARTITION = "urgent"
PREEMPT_GRACE_S = 10
# A requeued job may only start again `cred_expire` seconds later (SLURM's default 120 s, minimum 5 s).
REQUEUE_DELAY_S = 5
SYSTEM_PROGRAM_DIRS = ("/usr/sbin", "/sbin", "/usr/local/sbin")
LOG_TAIL_LINES = 30
COMMAND_TIMEOUT_S = 30.0


class SlurmClusterError(RuntimeError):
    """The local SLURM cluster could not be started."""


def find_program(name: str) -> str | None:
    """Return the absolute path of `name` on PATH or in the sbin folders, or None."""
    search_path = os.pathsep.join([os.environ.get("PATH", ""), *SYSTEM_PROGRAM_DIRS])
    return shutil.which(name, path=search_path)


def reason_cluster_cannot_run() -> str | None:
    """Return why a local cluster cannot run on this machine (missing programs, not root), or None."""
    missing = [name for name in REQUIRED_PROGRAMS if find_program(name) is None]
    if missing:
        return f"SLURM programs not found: {', '.join(missing)}; install them with `{INSTALL_COMMAND}`"
    if os.geteuid() != 0:
        return "the local SLURM cluster runs slurmctld, slurmd and munged as root; run the tests as root"
    return None


def short_hostname() -> str:
    """The host name without its domain, as `hostname -s` prints it."""
    return socket.gethostname().split(".")[0]


def total_memory_mib(meminfo: Path = Path("/proc/meminfo")) -> int:
    """Total memory of this machine in MiB, read from the `MemTotal` line of /proc/meminfo."""
    for line in meminfo.read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise SlurmClusterError(f"{meminfo}: no MemTotal line")


def free_tcp_port() -> int:
    """A TCP port that is free on localhost right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last `lines` lines of a text file, or a note that it does not exist."""
    if not path.exists():
        return f"({path} does not exist)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def is_munge_running() -> bool:
    """Whether a munged daemon answers on the default socket."""
    result = subprocess.run(
        [find_program("munge") or "munge", "-n"], check=False, capture_output=True, timeout=COMMAND_TIMEOUT_S
    )
    return result.returncode == 0


def ensure_munge_running() -> None:
    """Start `munged --force` unless a munged already answers; it is left running afterwards."""
    if is_munge_running():
        return
    MUNGE_SOCKET_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
    result = subprocess.run(
        [find_program("munged") or "munged", "--force"],
        check=False,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
    )
    if result.returncode != 0 or not is_munge_running():
        raise SlurmClusterError(
            f"munged --force failed (exit {result.returncode}): {result.stderr.strip()}; "
            f"is the key /etc/munge/munge.key there? (`{INSTALL_COMMAND}` creates it)"
        )


class LocalSlurmCluster:
    """One SLURM controller and one compute node (this machine).

    Jobs go to the default `debug` partition; a job in the `urgent` partition preempts them.

    Args:
        folder: where slurm.conf, state, spool, pid and log files go; a new temporary folder
            (removed by `stop()`) when None.
        start_timeout_s: how long `start()` waits for the node to become idle.
    """

    def __init__(self, folder: Path | None = None, start_timeout_s: float = 60.0) -> None:
        self._owns_folder = folder is None
        self.folder = Path(tempfile.mkdtemp(prefix="slurm-cluster-")) if folder is None else Path(folder)
        self.start_timeout_s = start_timeout_s
        self.node_name = short_hostname()
        self.cpus = len(os.sched_getaffinity(0))
        self.memory_mib = total_memory_mib()
        self.partition = PARTITION
        self.urgent_partition = URGENT_PARTITION
        self.config_path = self.folder / "slurm.conf"
        self._started = False

    @property
    def env(self) -> dict[str, str]:
        """Environment variables a process needs to talk to this cluster (merge into os.environ)."""
        return {"SLURM_CONF": str(self.config_path)}

    def _path(self, name: str) -> Path:
        return self.folder / name

    def config_text(self, controller_port: int, node_port: int) -> str:
        """The slurm.conf of this cluster, with the daemons listening on the given ports."""
        settings = {
            "ClusterName": "localtest",
            "SlurmctldHost": self.node_name,
            "SlurmctldPort": controller_port,
            "SlurmdPort": node_port,
            "SlurmUser": "root",
            "SlurmdUser": "root",
            "AuthType": "auth/munge",
            "CredType": "cred/munge",
            "AuthInfo": f"cred_expire={REQUEUE_DELAY_S}",
            "StateSaveLocation": self._path("state"),
            "SlurmdSpoolDir": self._path("spool"),
            "SlurmctldPidFile": self._path("slurmctld.pid"),
            "SlurmdPidFile": self._path("slurmd.pid"),
            "SlurmctldLogFile": self._path("slurmctld.log"),
            "SlurmdLogFile": self._path("slurmd.log"),
            "SlurmctldDebug": "info",
            "SlurmdDebug": "info",
            "ProctrackType": "proctrack/linuxproc",
            "TaskPlugin": "task/none",
            "MpiDefault": "none",
            "SchedulerType": "sched/backfill",
            "SchedulerParameters": "sched_interval=1,bf_interval=1",
            "SelectType": "select/cons_tres",
            "SelectTypeParameters": "CR_Core",
            "SlurmdParameters": "config_overrides",
            "ReturnToService": 2,
            "JobAcctGatherType": "jobacct_gather/none",
            "AccountingStorageType": "accounting_storage/none",
            "JobCompType": "jobcomp/none",
            "JobRequeue": 1,
            "KillWait": 2,
            "MinJobAge": 60,
            # A job of a higher PriorityTier partition preempts: the victim gets its --signal (submitit's
            # USR2, so it checkpoints and requeues itself) and is requeued after GraceTime at the latest.
            "PreemptType": "preempt/partition_prio",
            "PreemptMode": "REQUEUE",
            "SlurmctldParameters": "preempt_send_user_signal",
            "MailProg": "/bin/true",
        }
        lines = [f"{key}={value}" for key, value in settings.items()]
        lines.append(f"NodeName={self.node_name} CPUs={self.cpus} RealMemory={self.memory_mib} State=UNKNOWN")
        lines.append(
            f"PartitionName={self.partition} Nodes={self.node_name} Default=YES MaxTime=INFINITE State=UP "
            f"PriorityTier=1 GraceTime={PREEMPT_GRACE_S}"
        )
        lines.append(
            f"PartitionName={self.urgent_partition} Nodes={self.node_name} Default=NO MaxTime=INFINITE State=UP "
            "PriorityTier=10 PreemptMode=OFF"
        )
        return "\n".join(lines) + "\n"

    def start(self) -> None:
        """Write slurm.conf, start munged (if needed), slurmctld and slurmd; wait for an idle node.

        Raises:
            SlurmClusterError: with the daemon log tails; whatever had started is stopped again.
        """
        problem = reason_cluster_cannot_run()
        if problem:
            raise SlurmClusterError(problem)
        for name in ("state", "spool"):
            self._path(name).mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config_text(free_tcp_port(), free_tcp_port()))
        ensure_munge_running()
        self._started = True
        try:
            for daemon in ("slurmctld", "slurmd"):
                self._run_daemon(daemon)
            self._wait_for_idle_node()
        except BaseException:
            self.stop()
            raise

    def _run_daemon(self, daemon: str) -> None:
        program = find_program(daemon) or daemon
        result = subprocess.run(
            [program, "-f", str(self.config_path)],
            check=False,
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
        )
        if result.returncode != 0:
            raise SlurmClusterError(
                f"{daemon} -f {self.config_path} failed (exit {result.returncode}): {result.stderr.strip()}\n"
                f"{self.log_tails()}"
            )

    def _wait_for_idle_node(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        state = ""
        while time.monotonic() < deadline:
            state = self.node_state()
            if state == "idle":
                return
            time.sleep(0.5)
        raise SlurmClusterError(
            f"node {self.node_name} not idle after {self.start_timeout_s:.0f} s (sinfo says {state!r})\n"
            f"{self.log_tails()}"
        )

    def run_client(self, *args: str, timeout_s: float = COMMAND_TIMEOUT_S) -> subprocess.CompletedProcess:
        """Run a SLURM client command (sinfo, squeue, scontrol, ...) against this cluster."""
        return subprocess.run(
            list(args), check=False, env={**os.environ, **self.env}, capture_output=True, text=True, timeout=timeout_s
        )

    def node_state(self) -> str:
        """The node's state in the partition, as sinfo prints it (`idle`, `alloc`, `down*`, ...), '' if unreachable."""
        result = self.run_client("sinfo", "--noheader", "--Node", f"--partition={self.partition}", "--format=%T")
        return result.stdout.strip() if result.returncode == 0 else ""

    def job_ids(self) -> list[str]:
        """Ids of the jobs the controller still knows as pending, running or completing."""
        result = self.run_client("squeue", "--noheader", "--format=%A")
        return result.stdout.split() if result.returncode == 0 else []

    def log_tails(self) -> str:
        """The end of the slurmctld and slurmd logs, for error messages."""
        return "\n".join(
            f"--- {name} (last {LOG_TAIL_LINES} lines) ---\n{tail(self._path(name))}"
            for name in ("slurmctld.log", "slurmd.log")
        )

    def stop(self) -> None:
        """Cancel the remaining jobs, stop slurmd and slurmctld by their pid files, remove the folder."""
        if self._started:
            self._cancel_jobs()
            for daemon in ("slurmd", "slurmctld"):
                stop_by_pid_file(self._path(f"{daemon}.pid"))
            self._started = False
        if self._owns_folder:
            shutil.rmtree(self.folder, ignore_errors=True)

    def _cancel_jobs(self, timeout_s: float = 15.0) -> None:
        ids = self.job_ids()
        if not ids:
            return
        self.run_client("scancel", *ids)
        deadline = time.monotonic() + timeout_s
        while self.job_ids() and time.monotonic() < deadline:
            time.sleep(0.5)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def stop_by_pid_file(pid_file: Path, timeout_s: float = 10.0) -> None:
    """Send SIGTERM to the process named in `pid_file`, then SIGKILL if it is still there after `timeout_s`."""
    if not pid_file.exists():
        return
    pid = int(pid_file.read_text().split()[0])
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while is_alive(pid):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            return
        time.sleep(0.1)


def is_alive(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[LocalSlurmCluster]:
    """A started local SLURM cluster for the whole session, with SLURM_CONF set in os.environ."""
    problem = reason_cluster_cannot_run()
    if problem:
        pytest.skip(f"no local SLURM cluster: {problem}")
    cluster = LocalSlurmCluster()
    try:
        cluster.start()
        with pytest.MonkeyPatch.context() as patch:
            for name, value in cluster.env.items():
                patch.setenv(name, value)
            yield cluster
    finally:
        cluster.stop()
