"""Shared test fixtures: the reference data in ../shared (beside the checkout)."""

import os
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
