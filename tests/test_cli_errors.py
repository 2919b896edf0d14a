"""A user's mistake ends every command with its message alone on stderr and exit status 2; --debug shows the traceback."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dinov2.run.cli import INPUT_ERROR_STATUS, run_cli
from dinov2.utils.errors import InputError
from dinov2_vpr.data.synthetic import make_retrieval_dataset, make_sequence
from dinov2_vpr.run import eval as eval_command
from dinov2_vpr.run import extract as extract_command
from dinov2_vpr.run import loops as loops_command
from dinov2_vpr.run import retrieval as retrieval_command
from dinov2_vpr.run import train as train_command

from .conftest import REPO_ROOT, TINY_MODEL_ARGS, TINY_MODEL_OPTS

COMMANDS = {
    "train": train_command,
    "eval": eval_command,
    "extract": extract_command,
    "retrieval": retrieval_command,
    "loops": loops_command,
}


@pytest.fixture(scope="module")
def inputs(small_pair_dataset, tmp_path_factory) -> dict:
    """Valid inputs of every command, a wrong backbone file and a pair list with a bad label."""
    root = tmp_path_factory.mktemp("cli_inputs")
    make_retrieval_dataset(root / "benchmark", num_places=6, queries_per_place=1, image_size=(56, 56))
    sequence = make_sequence(
        root / "sequence", num_frames=12, revisit_segments=0, segment_length=2, image_size=(56, 56)
    )
    wrong_weights = root / "dinov2_vitb14_pretrain.pth"
    torch.save({"cls_token": torch.zeros(1, 1, 768), "pos_embed": torch.zeros(1, 1370, 768)}, wrong_weights)
    bad_lists = root / "bad_lists"
    bad_lists.mkdir()
    good_line = small_pair_dataset["train_dir"].joinpath(sorted(os.listdir(small_pair_dataset["train_dir"]))[0])
    first = good_line.read_text().splitlines()[0].rsplit(",", 1)[0]
    (bad_lists / "Kudamm_easy_final.txt").write_text(f"{first}, 1\n{first}, 0\n{first}, 1\n{first}, 0\n{first}, 2\n")
    return {
        "pairs": small_pair_dataset,
        "benchmark": root / "benchmark",
        "sequence": sequence["images"],
        "wrong_weights": wrong_weights,
        "bad_list": bad_lists / "Kudamm_easy_final.txt",
    }


def command_args(name: str, inputs: dict, output: Path) -> list[str]:
    """The data options of a command that would run; ``--opts`` comes last."""
    pairs = inputs["pairs"]
    data = {
        "train": ["--train-path", str(pairs["train_dir"]), "--image-root", str(pairs["image_root"])],
        "eval": ["--dataset-root", str(pairs["image_root"]), "--pair-lists", str(pairs["test_lists"][0])],
        "extract": ["--images", str(inputs["sequence"])],
        "retrieval": ["--dataset-folder", str(inputs["benchmark"]), "--recall-values", "1", "5"],
        "loops": ["--images", str(inputs["sequence"]), "--exclude-recent", "2"],
    }[name]
    threshold = ["--threshold", "0.5"] if name in ("eval", "loops") else []
    return [*data, *threshold, "--output-dir", str(output), "--opts", *TINY_MODEL_OPTS]


def run_with_error(name: str, argv: list[str], capsys: pytest.CaptureFixture) -> str:
    """Run command ``name`` as its ``__main__`` does; the stderr of the input error it must end with."""
    command = COMMANDS[name]
    check = command.check_args if name == "train" else None
    with pytest.raises(SystemExit) as exit_info:
        run_cli(command.get_args_parser(), command.main, argv, check=check)
    stderr = capsys.readouterr().err
    assert exit_info.value.code == INPUT_ERROR_STATUS, stderr
    assert "Traceback" not in stderr and stderr.startswith("error: "), stderr
    return stderr


MISSING = {
    "train": ("--train-path", "no_such_folder"),
    "eval": ("--pair-lists", "no_such_list.txt"),
    "extract": ("--images", "no_such_folder"),
    "retrieval": ("--dataset-folder", "no_such_folder"),
    "loops": ("--images", "no_such_folder"),
}


def with_option(argv: list[str], option: str, value: str) -> list[str]:
    """``argv`` with the value of ``option`` replaced."""
    position = argv.index(option)
    return [*argv[: position + 1], value, *argv[position + 2 :]]


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_missing_file(name, inputs, tmp_path, capsys):
    option, missing = MISSING[name]
    argv = with_option([*TINY_MODEL_ARGS, *command_args(name, inputs, tmp_path)], option, str(tmp_path / missing))
    assert missing in run_with_error(name, argv, capsys)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_unknown_config_key(name, inputs, tmp_path, capsys):
    argv = [*TINY_MODEL_ARGS, *command_args(name, inputs, tmp_path), "vpr.train.epoch=3"]
    stderr = run_with_error(name, argv, capsys)
    assert "Unknown config key 'vpr.train.epoch' in --opts. Did you mean vpr.train.epochs" in stderr


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_checkpoint_that_does_not_fit(name, inputs, tmp_path, capsys):
    argv = [TINY_MODEL_ARGS[0], TINY_MODEL_ARGS[1], "--pretrained-weights", str(inputs["wrong_weights"])]
    stderr = run_with_error(name, [*argv, *command_args(name, inputs, tmp_path)], capsys)
    assert "dinov2_vitb14_pretrain.pth' do not fit the model" in stderr
    assert "the checkpoint is ViT-B/14 (vitb14), not ViT-S/14 (vits14): use its config" in stderr


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_contradictory_options(name, inputs, tmp_path, capsys):
    argv = [*TINY_MODEL_ARGS, "--pretrained-weights", str(inputs["wrong_weights"])]
    stderr = run_with_error(name, [*argv, *command_args(name, inputs, tmp_path)], capsys)
    assert stderr == "error: give either --pretrained-weights or --random-backbone, not both\n"


@pytest.mark.parametrize("name", ["train", "eval"])
def test_bad_pair_list_line(name, inputs, tmp_path, capsys):
    argv = [*TINY_MODEL_ARGS, *command_args(name, inputs, tmp_path)]
    if name == "train":
        argv = with_option(argv, "--train-path", str(inputs["bad_list"].parent))
    else:
        argv = with_option(argv, "--pair-lists", str(inputs["bad_list"]))
    stderr = run_with_error(name, argv, capsys)
    assert f"{inputs['bad_list']}:5: label must be 0 or 1, got '2'" in stderr
    assert "vpr.data.skip_invalid=true" in stderr


def test_debug_shows_the_traceback(inputs, tmp_path, monkeypatch):
    argv = [*TINY_MODEL_ARGS, *command_args("eval", inputs, tmp_path)]
    argv = with_option(argv, "--pair-lists", str(inputs["bad_list"]))
    with pytest.raises(InputError, match="label must be 0 or 1"):
        run_cli(eval_command.get_args_parser(), eval_command.main, [*argv[:2], "--debug", *argv[2:]])
    monkeypatch.setenv("DINOV2_VPR_DEBUG", "1")
    with pytest.raises(InputError, match="label must be 0 or 1"):
        run_cli(eval_command.get_args_parser(), eval_command.main, argv)


def test_a_real_bug_keeps_its_traceback(inputs, tmp_path, monkeypatch):
    def broken(args):
        raise ZeroDivisionError("a bug")

    with pytest.raises(ZeroDivisionError):
        run_cli(eval_command.get_args_parser(), broken, [*TINY_MODEL_ARGS, *command_args("eval", inputs, tmp_path)])


def test_the_installed_command_prints_only_the_message(inputs, tmp_path):
    argv = [*TINY_MODEL_ARGS, *command_args("train", inputs, tmp_path)]
    argv = with_option(argv, "--train-path", str(inputs["bad_list"].parent))
    result = subprocess.run(
        [sys.executable, "-m", "dinov2_vpr.run.train", *argv],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == INPUT_ERROR_STATUS, result.stderr
    assert result.stderr.startswith("error: 1 problem(s) in the pair lists:\n"), result.stderr
    assert "Traceback" not in result.stderr and "label must be 0 or 1, got '2'" in result.stderr
