"""Shared test fixtures: the reference data in ../shared (beside the checkout)."""

import itertools
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

SHARED_FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"


def shared_fixture_dir(name: str) -> Path:
    """``../shared/fixtures/<name>``; skipped where absent (a user's clone), a failure under ``CI=true``."""
    path = SHARED_FIXTURES / name
    if not path.is_dir():
        message = f"{path} not found: the reference fixtures live in ../shared beside the checkout"
        if os.environ.get("CI") == "true":
            pytest.fail(message + " (CI=true: they must be present)")
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def dinov2_reference_dir() -> Path:
    return shared_fixture_dir("dinov2_reference")


@pytest.fixture(scope="session")
def pairlists_dir() -> Path:
    return shared_fixture_dir("pairlists")


@pytest.fixture(scope="session")
def vpr_methods_dir() -> Path:
    return shared_fixture_dir("vpr_methods")


REPO_ROOT = Path(__file__).resolve().parents[1]
TORCHRUN_TIMEOUT_S = 300


def interrupted_on_call(function: Callable, call: int) -> Callable:
    """``function``, except that its ``call``-th call raises KeyboardInterrupt (a training killed at that point)."""
    calls = itertools.count(1)

    def wrapper(*args, **kwargs):
        if next(calls) == call:
            raise KeyboardInterrupt
        return function(*args, **kwargs)

    return wrapper


def torchrun(module: str, argv: list[str], processes: int = 2) -> subprocess.CompletedProcess:
    """``python -m module argv`` as ``processes`` torchrun processes on this machine (gloo on the CPU), which
    must succeed. One thread per process: two processes share the 2 cores as one process with 2 threads does."""
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
        + ["-m", module, *argv],
        cwd=REPO_ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=TORCHRUN_TIMEOUT_S,
    )
    assert result.returncode == 0, f"torchrun failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


# A random ViT-S/14 on 56x56 images with a tiny head: the whole pipeline in seconds on a CPU.
TINY_MODEL_ARGS = ["--config-file", str(REPO_ROOT / "dinov2/configs/eval/vits14_pretrain.yaml"), "--random-backbone"]
TINY_MODEL_OPTS = [
    "vpr.data.image_size=[56,56]",
    "vpr.data.num_workers=0",
    "vpr.head.hidden_dims=[32]",
    "vpr.head.output_dim=16",
    "vpr.head.dropout=0.0",
    "vpr.features.precision=fp32",  # exact comparisons; test_precision.py covers auto and bf16
]


@pytest.fixture(scope="session")
def small_pair_dataset(tmp_path_factory) -> dict:
    """A generated loop-verification dataset (16 places, 56x56 images) in the real list format."""
    from dinov2_vpr.data.synthetic import make_pair_dataset

    return make_pair_dataset(tmp_path_factory.mktemp("pair_dataset"), num_places=16, seed=0, image_size=(56, 56))
