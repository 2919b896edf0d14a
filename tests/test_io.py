import os

import pytest
import torch

from dinov2_vpr.io import atomic_save_torch, atomic_write, atomic_write_text


def test_atomic_write_replaces_the_file(tmp_path):
    path = tmp_path / "sub" / "file.txt"
    atomic_write_text(path, "old\n")
    with atomic_write(path) as handle:
        handle.write("new\r\nline\n")
        assert path.read_text() == "old\n"  # readers see the old file until the end
    assert path.read_bytes() == b"new\r\nline\n"  # no newline translation
    assert os.listdir(path.parent) == ["file.txt"]


def test_atomic_write_keeps_the_old_file_on_error(tmp_path):
    path = tmp_path / "file.bin"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"), atomic_write(path, "wb") as handle:
        handle.write(b"partial")
        raise RuntimeError("boom")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["file.bin"]


def test_atomic_write_permissions_follow_the_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "file.txt", "x")
    finally:
        os.umask(previous)
    assert (tmp_path / "file.txt").stat().st_mode & 0o777 == 0o644


def test_atomic_write_rejects_other_modes(tmp_path):
    with pytest.raises(ValueError, match="mode"), atomic_write(tmp_path / "file.txt", "a"):
        pass
    assert os.listdir(tmp_path) == []


def test_atomic_save_torch_round_trip(tmp_path):
    state = {"weight": torch.arange(6.0).reshape(2, 3), "epoch": 3}
    atomic_save_torch(state, tmp_path / "checkpoint.pth")
    loaded = torch.load(tmp_path / "checkpoint.pth", weights_only=True)
    assert loaded["epoch"] == 3 and torch.equal(loaded["weight"], state["weight"])
    assert os.listdir(tmp_path) == ["checkpoint.pth"]
