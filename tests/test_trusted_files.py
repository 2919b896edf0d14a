"""Model files are data: a .pth whose pickle carries code is refused unless --trust-pickle, and never runs."""

from pathlib import Path

import pytest
import torch

from dinov2.run.cli import INPUT_ERROR_STATUS, run_cli
from dinov2.utils.files import UntrustedFileError, load_torch_file, set_trust_pickle
from dinov2_vpr.run import eval as eval_command
from dinov2_vpr.run import train as train_command

from .conftest import TINY_MODEL_ARGS, TINY_MODEL_OPTS


class Payload:
    """Unpickling this creates the file ``marker``: a stand-in for any code a malicious file could run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture()
def payload_file(tmp_path) -> tuple[Path, Path]:
    """A ``.pth`` that looks like a head file but carries a payload, and the marker the payload would create."""
    marker, path = tmp_path / "payload_ran", tmp_path / "head.pth"
    torch.save({"head": {"layers.0.weight": torch.zeros(2, 2)}, "threshold": 0.5, "extra": Payload(marker)}, path)
    return path, marker


@pytest.fixture(autouse=True)
def untrusted():
    yield
    set_trust_pickle(False)


def _refused(command, argv: list[str], capsys) -> str:
    check = getattr(command, "check_args", None)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(command.get_args_parser(), command.main, argv, check=check)
    assert exit_info.value.code == INPUT_ERROR_STATUS
    return capsys.readouterr().err


@pytest.mark.parametrize("option", ["--pretrained-weights", "--head", "--MLP-weight-path"])
def test_a_payload_is_refused_by_every_option_and_never_runs(
    option, payload_file, small_pair_dataset, tmp_path, capsys
):
    path, marker = payload_file
    data = small_pair_dataset
    if option == "--MLP-weight-path":
        command = train_command
        argv = [*TINY_MODEL_ARGS, "--use-pretrain-MLP", option, str(path), "--train-path", str(data["train_dir"])]
        argv += ["--image-root", str(data["image_root"])]
    else:
        command = eval_command
        backbone = [TINY_MODEL_ARGS[0], TINY_MODEL_ARGS[1]]
        backbone += [option, str(path), "--random-backbone"] if option == "--head" else [option, str(path)]
        argv = [*backbone, "--dataset-root", str(data["image_root"]), "--pair-lists", str(data["test_lists"][0])]
        argv += ["--threshold", "0.5"]
    stderr = _refused(command, [*argv, "--output-dir", str(tmp_path / "run"), "--opts", *TINY_MODEL_OPTS], capsys)
    assert f"{path} holds pickled objects beyond tensors" in stderr and "--trust-pickle" in stderr, stderr
    assert "(GLOBAL getattr)" in stderr, "the error names what was refused"
    assert not marker.exists(), "the payload ran"


def test_trust_pickle_loads_such_a_file_fully(payload_file, small_pair_dataset, tmp_path, capsys):
    path, marker = payload_file
    with pytest.raises(UntrustedFileError):
        load_torch_file(path)
    assert not marker.exists()
    data = small_pair_dataset
    argv = [TINY_MODEL_ARGS[0], TINY_MODEL_ARGS[1], "--pretrained-weights", str(path), "--trust-pickle"]
    argv += ["--dataset-root", str(data["image_root"]), "--pair-lists", str(data["test_lists"][0]), "--threshold", "1"]
    stderr = _refused(eval_command, [*argv, "--output-dir", str(tmp_path / "run"), "--opts", *TINY_MODEL_OPTS], capsys)
    assert marker.exists(), "--trust-pickle unpickles the whole file"
    assert "no checkpoint key 'teacher' and no state dict" in stderr  # it is still no backbone


def test_a_file_that_is_no_pytorch_file_is_named(tmp_path):
    path = tmp_path / "weights.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=f"backbone weights {path} is not a PyTorch file that can be read"):
        load_torch_file(path, what="backbone weights")
    with pytest.raises(FileNotFoundError, match="head file .*missing.pth does not exist"):
        load_torch_file(tmp_path / "missing.pth", what="head file")
