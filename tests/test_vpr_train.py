"""The training command end to end on generated data with a tiny random backbone."""

import json
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from dinov2.utils.errors import InputError
from dinov2_vpr.config import build_vpr_config
from dinov2_vpr.data.image_table import PairIndex
from dinov2_vpr.data.pairs import PairListError
from dinov2_vpr.features import pooling
from dinov2_vpr.run import train as train_command
from dinov2_vpr.training.pair_learners import head_learner
from dinov2_vpr.training.trainer import train_on_pairs

from .conftest import REPO_ROOT, TINY_MODEL_ARGS, TINY_MODEL_OPTS


def _train_argv(dataset: dict, output_dir, *extra_opts: str, extra_args=()) -> list[str]:
    return [
        *TINY_MODEL_ARGS,
        "--train-path",
        str(dataset["train_dir"]),
        "--image-root",
        str(dataset["image_root"]),
        "--split",
        "--output-dir",
        str(output_dir),
        "--batch-size",
        "8",
        *extra_args,
        "--opts",
        *TINY_MODEL_OPTS,
        *extra_opts,
    ]


def _train(dataset, output_dir, *extra_opts, extra_args=()):
    args = train_command.get_args_parser().parse_args(
        _train_argv(dataset, output_dir, *extra_opts, extra_args=extra_args)
    )
    return train_command.main(args)


def test_original_command_line_is_accepted(tmp_path):
    argv = [
        "--config-file",
        "dinov2/configs/eval/vitl14_pretrain.yaml",
        "--pretrained-weights",
        "dinov2_vitl14_pretrain.pth",
        "--output-dir",
        str(tmp_path),
        "--split",
        "--train-path",
        "data/train",
        "--batch-size",
        "32",
        "--use-pretrain-MLP",
        "--MLP-weight-path",
        "head.pth",
    ]
    args = train_command.get_args_parser().parse_args(argv)
    assert args.split and args.use_pretrain_MLP and args.MLP_weight_path == "head.pth"
    cfg = build_vpr_config(args.config_file, train_command._options(args))
    assert cfg.vpr.train.batch_size == 32 and cfg.student.arch == "vit_large" and cfg.crops.global_crops_size == 518


def test_training_writes_head_checkpoints_and_tensorboard(small_pair_dataset, tmp_path):
    metrics = _train(small_pair_dataset, tmp_path, "vpr.train.epochs=5", "vpr.train.keep_checkpoints=2")
    head = torch.load(tmp_path / "head.pth", weights_only=True)
    assert set(head) >= {"head", "threshold", "embed_dim", "config", "best_epoch"}
    assert head["config"]["vpr"]["data"]["image_size"] == [56, 56] and head["embed_dim"] == 384
    saved = json.loads((tmp_path / "train_metrics.json").read_text())
    assert saved["best_epoch"] == metrics["best_epoch"] and len(saved["history"]) == 5
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "best.pth",
        "epoch_0003.pth",
        "epoch_0004.pth",
        "last_checkpoint",
    ]
    assert OmegaConf.load(tmp_path / "config.yaml").vpr.train.batch_size == 8
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0}).Reload()
    assert {"train/loss", "train/lr", "val/average_precision"} <= set(events.Tags()["scalars"])
    assert "val/pr_curve" in events.Tags()["images"]
    learning_rates = [event.value for event in events.Scalars("train/lr")]
    assert learning_rates[0] < max(learning_rates) and learning_rates[-1] < max(learning_rates) / 10  # warm-up, cosine
    assert "RANDOM BACKBONE" in (tmp_path / "logs" / "log.txt").read_text()


def test_second_run_reads_every_feature_from_the_cache(small_pair_dataset, tmp_path, monkeypatch):
    cache = ["--cache-dir", str(tmp_path / "cache")]
    _train(small_pair_dataset, tmp_path / "first", "vpr.train.epochs=1", extra_args=cache)
    calls = []
    original = pooling.backbone_features
    monkeypatch.setattr(pooling, "backbone_features", lambda *a: calls.append(1) or original(*a))
    _train(small_pair_dataset, tmp_path / "second", "vpr.train.epochs=2", extra_args=cache)
    assert calls == []
    assert not (tmp_path / "second" / "feature_cache").exists()


def test_resume_after_a_kill_ends_with_the_same_head(small_pair_dataset, tmp_path):
    epochs = "vpr.train.epochs=60"
    _train(small_pair_dataset, tmp_path / "straight", epochs, "vpr.train.keep_checkpoints=0")
    reference = torch.load(tmp_path / "straight" / "head.pth", weights_only=True)["head"]

    interrupted = tmp_path / "interrupted"
    shutil.copytree(tmp_path / "straight" / "feature_cache", interrupted / "feature_cache")  # only training is timed
    command = [sys.executable, "-m", "dinov2_vpr.run.train", *_train_argv(small_pair_dataset, interrupted, epochs)]
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (interrupted / "checkpoints" / "epoch_0002.pth").exists():
        assert process.poll() is None and time.time() < deadline, "training ended before it could be interrupted"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    last = (interrupted / "checkpoints" / "last_checkpoint").read_text()
    assert not (interrupted / "head.pth").exists() and last < "epoch_0059.pth"

    _train(small_pair_dataset, interrupted, epochs)  # re-running into the same folder resumes
    assert f"Resuming from {interrupted / 'checkpoints' / last}" in (interrupted / "logs" / "log.txt").read_text()
    resumed = torch.load(interrupted / "head.pth", weights_only=True)["head"]
    for key, value in reference.items():
        torch.testing.assert_close(resumed[key], value, rtol=0, atol=0)


def test_nan_loss_stops_with_a_clear_message(tmp_path):
    cfg = build_vpr_config(None, ["vpr.head.hidden_dims=[8]", "vpr.head.output_dim=4", "vpr.train.epochs=1"])
    features = torch.randn(6, 384)
    features[2, 5] = float("nan")
    pairs = PairIndex(torch.tensor([0, 2, 4]), torch.tensor([1, 3, 5]), torch.tensor([1.0, 0.0, 1.0]))
    with pytest.raises(FloatingPointError, match=r"loss became nan at epoch 0.*lower vpr.train.lr"):
        train_on_pairs(cfg, head_learner(cfg, features, 384, torch.arange(6), None), pairs, pairs, tmp_path)


def test_bad_input_is_reported_before_any_work(small_pair_dataset, tmp_path):
    train_dir = tmp_path / "lists"
    shutil.copytree(small_pair_dataset["train_dir"], train_dir)
    first_list = sorted(train_dir.glob("*.txt"))[0]
    lines = first_list.read_text().splitlines()
    lines[1] = lines[1].rsplit(",", 1)[0] + ", 2"
    lines[3] = "Synth_query/missing.jpg, " + lines[3].split(",", 1)[1].strip()
    first_list.write_text("\n".join(lines) + "\n")
    dataset = {**small_pair_dataset, "train_dir": train_dir}
    with pytest.raises(PairListError) as error:
        _train(dataset, tmp_path / "run", "vpr.train.epochs=1")
    assert f"{first_list}:2: " in str(error.value) and f"{first_list}:4: query image" in str(error.value)
    assert "vpr.data.skip_invalid=true" in str(error.value)
    assert not (tmp_path / "run" / "feature_cache").exists()
    metrics = _train(dataset, tmp_path / "run", "vpr.train.epochs=1", "vpr.data.skip_invalid=true")
    assert metrics["skipped_problems"] == 2


def test_weights_are_required_unless_random_backbone_is_asked_for(small_pair_dataset, tmp_path):
    argv = [arg for arg in _train_argv(small_pair_dataset, tmp_path) if arg != "--random-backbone"]
    with pytest.raises(InputError, match="--pretrained-weights is required"):
        train_command.main(train_command.get_args_parser().parse_args(argv))


def test_training_can_start_from_a_trained_head(small_pair_dataset, tmp_path):
    cache = ["--cache-dir", str(tmp_path / "cache")]
    _train(small_pair_dataset, tmp_path / "first", "vpr.train.epochs=3", extra_args=cache)
    first = torch.load(tmp_path / "first" / "head.pth", weights_only=True)["head"]
    start = ["--use-pretrain-MLP", "--MLP-weight-path", str(tmp_path / "first" / "head.pth"), *cache]
    _train(
        small_pair_dataset,
        tmp_path / "second",
        "vpr.train.epochs=1",
        "vpr.train.lr=1e-20",
        "vpr.train.min_lr=1e-22",
        extra_args=start,
    )
    second = torch.load(tmp_path / "second" / "head.pth", weights_only=True)["head"]
    for key, value in first.items():
        torch.testing.assert_close(second[key], value)
