"""Place training (``--places-root``, SALAD/BoQ recipes) end to end on generated places with a tiny random ViT-S/14."""

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from dinov2.utils.errors import InputError
from dinov2.utils.files import load_torch_file
from dinov2_vpr.config import build_vpr_config
from dinov2_vpr.data.synthetic import make_place_dataset, make_retrieval_dataset
from dinov2_vpr.features.descriptors import load_descriptor_files
from dinov2_vpr.models.descriptor import load_place_model
from dinov2_vpr.retrieval.recall import evaluate_retrieval
from dinov2_vpr.run import demo
from dinov2_vpr.run import extract as extract_command
from dinov2_vpr.run import train as train_command
from dinov2_vpr.training import place_trainer
from dinov2_vpr.training.place_data import read_validation_folder
from dinov2_vpr.training.schedules import place_lr_factor

from .conftest import REPO_ROOT, interrupted_on_call, torchrun

CONFIG_FILE = str(REPO_ROOT / "dinov2/configs/eval/vits14_pretrain.yaml")
OPTS = [
    "vpr.data.image_size=[56,56]",
    "vpr.data.val_image_size=[56,56]",
    "vpr.data.num_workers=0",
    "vpr.features.precision=fp32",
    "vpr.train.places_per_batch=4",
    "vpr.train.epochs=2",
    "vpr.model.trainable_blocks=2",
    "vpr.train.linear_steps=10",
    "vpr.train.warmup_steps=0",
    "vpr.train.milestones=[1]",
    "vpr.model.aggregator.salad.num_clusters=8",
    "vpr.model.aggregator.salad.cluster_dim=16",
    "vpr.model.aggregator.boq.proj_channels=64",
    "vpr.model.aggregator.boq.num_queries=8",
]
METHODS = ("salad", "boq")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("places")
    make_place_dataset(root / "places", num_places=8, images_per_place=4, image_size=(56, 56))
    make_retrieval_dataset(root / "val", num_places=6, queries_per_place=1, seed=1, image_size=(56, 56))
    return {"places": root / "places", "val": root / "val"}


def _argv(data: dict, method: str, output_dir, *opts: str) -> list[str]:
    return [
        *("--config-file", CONFIG_FILE, "--random-backbone", "--method", method),
        *("--places-root", str(data["places"]), "--val-folder", str(data["val"]), "--output-dir", str(output_dir)),
        *("--opts", *OPTS, *opts),
    ]


def _train(data: dict, method: str, output_dir, *opts: str) -> dict:
    return train_command.main(train_command.get_args_parser().parse_args(_argv(data, method, output_dir, *opts)))


def _model_state(output_dir) -> dict:
    return load_torch_file(output_dir / "model.pth")["model"]


def _assert_same_states(first: dict, second: dict, atol: float = 0.0, rtol: float = 0.0) -> None:
    assert first.keys() == second.keys()
    for key in first:
        torch.testing.assert_close(first[key], second[key], atol=atol, rtol=rtol, msg=key)


@pytest.mark.parametrize("method", METHODS)
def test_training_writes_the_model_checkpoints_and_tensorboard(method, data, tmp_path):
    metrics = _train(data, method, tmp_path)
    assert len(metrics["history"]) == 2 and set(metrics["zero_shot"]) == {"R@1", "R@5"}
    saved = torch.load(tmp_path / "model.pth", weights_only=True)
    assert saved["recalls"]["R@1"] == metrics["val_R@1"] and saved["preprocessing"]["size"] == [56, 56]
    assert saved["config"]["vpr"]["model"]["method"] == method
    # Only what trains is saved: the last 2 of 12 blocks, the final norm where the aggregator uses it (SALAD), the aggregator.
    backbone_keys = {key.split(".")[2] for key in saved["model"] if key.startswith("backbone.blocks.")}
    assert backbone_keys == {"10", "11"} and ("backbone.norm.weight" in saved["model"]) == (method == "salad")
    assert any(key.startswith("aggregator.") for key in saved["model"])
    assert not any(key.startswith(("backbone.patch_embed", "backbone.blocks.9.")) for key in saved["model"])
    checkpoints = {path.name for path in (tmp_path / "checkpoints").iterdir()}
    assert {"epoch_0000.pth", "epoch_0001.pth", "best.pth", "last_checkpoint"} <= checkpoints
    events = EventAccumulator(str(tmp_path / "tensorboard")).Reload()
    tags = {"train/loss", "train/lr", "train/positive_pairs", "train/negative_pairs", "val/R@1", "val/R@5"}
    assert tags <= set(events.Tags()["scalars"])
    assert len(events.Scalars("train/loss")) == 4  # 8 places / 4 a batch, 2 epochs


def test_resume_after_an_interruption_trains_the_same_model(data, tmp_path, monkeypatch):
    _train(data, "salad", tmp_path / "whole")
    validate = place_trainer.validate
    # Validates zero-shot and after epoch 0, then dies at the end of epoch 1's training.
    monkeypatch.setattr(place_trainer, "validate", interrupted_on_call(validate, 3))
    with pytest.raises(KeyboardInterrupt):
        _train(data, "salad", tmp_path / "resumed")
    assert not (tmp_path / "resumed" / "checkpoints" / "epoch_0001.pth").exists()
    monkeypatch.setattr(place_trainer, "validate", validate)
    _train(data, "salad", tmp_path / "resumed")
    _assert_same_states(_model_state(tmp_path / "whole"), _model_state(tmp_path / "resumed"))


@pytest.mark.parametrize("method", METHODS)
def test_the_trunk_cache_trains_as_the_whole_backbone(method, data, tmp_path):
    cached = ("vpr.train.trunk_cache_dtype=fp32", "vpr.train.trunk_cache=true")
    _train(data, method, tmp_path / "cached", *cached)
    _train(data, method, tmp_path / "online", "vpr.train.trunk_cache=false")
    assert any((tmp_path / "cached" / "feature_cache").glob("*/chunk-*.npy"))
    assert not (tmp_path / "online" / "feature_cache").exists()
    _assert_same_states(_model_state(tmp_path / "cached"), _model_state(tmp_path / "online"), atol=1e-5, rtol=1e-4)


def test_augmented_training_runs_randaugment_per_image(data, tmp_path, monkeypatch):
    batches = []

    class Recorded(place_trainer.TrainAugmentation):
        def forward(self, images):
            batches.append((len(images), self.group_size))
            return super().forward(images)

    monkeypatch.setattr(place_trainer, "TrainAugmentation", Recorded)
    metrics = _train(data, "boq", tmp_path, "vpr.train.augment=true", "vpr.train.epochs=1")
    assert np.isfinite(metrics["history"][0]["train_loss"])
    assert batches == [(16, 1), (16, 1)]  # 4 places x 4 images a batch, the operations drawn for each image


def test_model_option_describes_with_the_trained_model(data, tmp_path):
    _train(data, "salad", tmp_path / "run", "vpr.train.epochs=1")
    argv = ["--random-backbone", "--model", str(tmp_path / "run"), "--images", str(data["val"] / "queries")]
    argv += ["--output", str(tmp_path / "extract"), "--opts", "vpr.data.num_workers=0", "vpr.features.precision=fp32"]
    info = extract_command.main(extract_command.get_args_parser().parse_args(argv))
    assert info["model"]["method"] == "salad" and info["model"]["model"] == str((tmp_path / "run/model.pth").resolve())
    descriptors, paths = load_descriptor_files(tmp_path / "extract")
    model = load_place_model(model=tmp_path / "run", random_backbone=True, opts=["vpr.features.precision=fp32"])
    assert model.transform.size == (56, 56) and model.transform.resize == "pil_bilinear"
    np.testing.assert_allclose(descriptors, model.describe(paths).numpy(), atol=1e-5)
    # The file brings the backbone and preprocessing: the same recall as in training, without a config file.
    val = read_validation_folder(data["val"])
    found = evaluate_retrieval(
        model.describe(val.database).numpy(), model.describe(val.queries).numpy(), val.database_xy, val.queries_xy, [1]
    )
    assert found.recalls[1] == load_torch_file(tmp_path / "run" / "model.pth")["recalls"]["R@1"]
    untrained = load_place_model(config_file=CONFIG_FILE, method="salad", random_backbone=True, opts=OPTS)
    assert not np.allclose(untrained.describe(paths[:2]).numpy(), descriptors[:2], atol=1e-3)


def test_recipes_and_schedules():
    salad = build_vpr_config(None, recipe="salad").vpr
    assert (salad.train.lr, salad.train.places_per_batch, salad.model.trainable_blocks) == (6e-5, 60, 4)
    assert salad.data.image_size == [224, 224] and salad.data.val_image_size == [322, 322]
    factor = place_lr_factor(salad.train, steps_per_epoch=100)
    assert (
        factor(0) == 1.0 and factor(2000) == pytest.approx(0.6) and factor(4000) == factor(9000) == pytest.approx(0.2)
    )
    boq = build_vpr_config(None, ["vpr.train.epochs=3"], recipe="boq").vpr
    assert (boq.train.lr, boq.train.places_per_batch, boq.model.trainable_blocks, boq.train.epochs) == (2e-4, 160, 2, 3)
    factor = place_lr_factor(boq.train, steps_per_epoch=1000)
    assert factor(0) == pytest.approx(1 / 3900) and factor(3899) == 1.0
    assert factor(9999) == 1.0 and factor(10000) == pytest.approx(0.1) and factor(30000) == pytest.approx(1e-3)
    assert OmegaConf.select(build_vpr_config(None), "vpr.model.trainable_blocks") == 0


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--train-path", "x"], "either --train-path"),
        (["--split"], "--split"),
    ],
)
def test_place_options_are_checked(extra, message, data, tmp_path):
    args = train_command.get_args_parser().parse_args([*_argv(data, "salad", tmp_path), *extra])
    with pytest.raises(InputError, match=message):
        train_command.main(args)


def test_two_processes_train_the_same_model_as_one(data, tmp_path):
    """torchrun with 2 processes (gloo, CPU) against one, on the same trunk cache, with SALAD's dropout (0.3)."""
    opts = ("vpr.train.trunk_cache_dtype=fp32",)
    double = tmp_path / "double"
    argv = _argv(data, "salad", double, *opts)
    torchrun("dinov2_vpr.run.train", argv)
    single = tmp_path / "single"
    _train(data, "salad", single, *opts, f"vpr.features.cache_dir={double / 'feature_cache'}")
    assert "Trunk tokens: 0 of" in (single / "logs" / "log.txt").read_text()
    assert load_torch_file(single / "model.pth")["config"]["vpr"]["model"]["aggregator"]["salad"]["dropout"] == 0.3
    _assert_same_states(_model_state(double), _model_state(single), atol=1e-5, rtol=1e-4)
    # The best model may be the first epoch's: the last epoch's state shows the whole training agrees.
    last = [load_torch_file(run / "checkpoints" / "epoch_0001.pth")["model"] for run in (double, single)]
    _assert_same_states(*last, atol=1e-5, rtol=1e-4)


def test_the_demo_fine_tunes_a_place_model(tmp_path, capsys):
    args = demo.get_args_parser().parse_args(
        ["--method", "salad", "--output-dir", str(tmp_path), "--num-places", "20", "--epochs", "2"]
    )
    metrics = demo.main(args)
    assert metrics["history"][1]["train_loss"] < metrics["history"][0]["train_loss"]
    printed = capsys.readouterr().out
    assert "zero-shot" in printed and "fine-tuned" in printed and "R@1" in printed
    assert (tmp_path / "train_salad" / "model.pth").is_file()
