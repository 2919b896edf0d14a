"""Pair lists fine-tune the last blocks with the head (``vpr.model.trainable_blocks``); ``--model`` then uses the result."""

import json

import pytest
import torch
from sklearn.metrics import average_precision_score
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from dinov2.utils.errors import InputError
from dinov2_vpr.config import build_vpr_config
from dinov2_vpr.data.pairs import find_pair_lists, read_pair_lists, split_by_query
from dinov2_vpr.models.backbone import load_backbone
from dinov2_vpr.models.descriptor import load_place_model
from dinov2_vpr.run import eval as eval_command
from dinov2_vpr.training import trainer

from .conftest import TINY_MODEL_ARGS, TINY_MODEL_OPTS, interrupted_on_call, torchrun
from .test_vpr_train import _train, _train_argv

# Two of the 12 blocks and the head, dropout on; an fp32 trunk cache, so the cached tail equals the whole backbone.
FINE_TUNE = (
    "vpr.model.trainable_blocks=2",
    "vpr.train.tail_lr=0.0002",  # the pretrained blocks' learning rate; the head's is 1e-3
    "vpr.train.trunk_cache_dtype=fp32",
    "vpr.head.dropout=0.1",
)
EPOCHS = "vpr.train.epochs=3"


@pytest.fixture(scope="module")
def fine_tuned(small_pair_dataset, tmp_path_factory) -> dict:
    run = tmp_path_factory.mktemp("fine_tuned")
    return {"run": run, "metrics": _train(small_pair_dataset, run, *FINE_TUNE, EPOCHS)}


def _state(run) -> dict:
    return torch.load(run / "model.pth", weights_only=True)["model"]


def test_fine_tuning_saves_the_last_blocks_and_the_head(fine_tuned):
    run, metrics = fine_tuned["run"], fine_tuned["metrics"]
    saved = torch.load(run / "model.pth", weights_only=True)
    assert not (run / "head.pth").exists() and len(metrics["history"]) == 3
    assert saved["threshold"] == metrics["threshold"] and saved["best_epoch"] == metrics["best_epoch"]
    assert saved["preprocessing"]["size"] == [56, 56] and saved["config"]["vpr"]["model"]["trainable_blocks"] == 2
    state = saved["model"]
    assert {key.split(".")[2] for key in state if key.startswith("backbone.blocks.")} == {"10", "11"}
    assert "backbone.norm.weight" in state and any(key.startswith("head.layers.") for key in state)
    assert not any(key.startswith(("backbone.patch_embed", "backbone.blocks.9.")) for key in state)
    # The blocks did train: they left the (seeded, random) backbone's weights.
    backbone, _ = load_backbone(build_vpr_config(TINY_MODEL_ARGS[1], list(TINY_MODEL_OPTS)), None)
    initial = backbone.state_dict()
    for key in ("blocks.11.mlp.fc1.weight", "blocks.10.attn.qkv.weight", "norm.weight"):
        assert not torch.allclose(state[f"backbone.{key}"], initial[key]), key
    log = (run / "logs" / "log.txt").read_text()
    assert "Trunk tokens: 24 of 24 images to encode" in log  # once, then every epoch reads the cache
    # The head at vpr.train.lr, the 2 blocks and the norm at vpr.train.tail_lr, both on the schedule.
    groups = torch.load(run / "checkpoints" / "epoch_0002.pth", weights_only=True)["optimizer"]["param_groups"]
    assert [group["initial_lr"] for group in groups] == [1e-3, 2e-4] and len(groups[1]["params"]) == sum(
        key.startswith("backbone.") for key in state
    )
    events = EventAccumulator(str(run / "tensorboard")).Reload()
    rates = [
        (head.value, tail.value) for head, tail in zip(events.Scalars("train/lr"), events.Scalars("train/tail_lr"))
    ]
    assert all(tail == pytest.approx(head / 5) for head, tail in rates) and rates[-1][0] < rates[0][0] / 10


def test_the_model_option_gives_the_descriptors_and_threshold_of_training(fine_tuned, small_pair_dataset, tmp_path):
    run, metrics = fine_tuned["run"], fine_tuned["metrics"]
    # The validation pairs of training (its --split), described by the saved model through the whole backbone.
    cfg = build_vpr_config(TINY_MODEL_ARGS[1], [*TINY_MODEL_OPTS, *FINE_TUNE])
    pairs, _ = read_pair_lists(find_pair_lists(small_pair_dataset["train_dir"]), small_pair_dataset["image_root"])
    _, val_pairs = split_by_query(pairs, cfg.vpr.data.val_fraction, cfg.vpr.train.seed)
    model = load_place_model(model=run, random_backbone=True, config_file=TINY_MODEL_ARGS[1], opts=TINY_MODEL_OPTS)
    root = small_pair_dataset["image_root"]
    query = model.describe([root / pair.query for pair in val_pairs])
    reference = model.describe([root / pair.reference for pair in val_pairs])
    scores = (query * reference).sum(dim=-1).numpy()
    labels = [pair.label for pair in val_pairs]
    assert average_precision_score(labels, scores) == pytest.approx(metrics["val_average_precision"], abs=1e-6)

    argv = [
        *TINY_MODEL_ARGS,
        *("--model", str(run), "--dataset-root", str(root), "--output-dir", str(tmp_path)),
        *("--pair-lists", *map(str, small_pair_dataset["test_lists"])),
        *("--opts", *TINY_MODEL_OPTS),
    ]
    evaluated = eval_command.main(eval_command.get_args_parser().parse_args(argv))
    assert evaluated["threshold"] == metrics["threshold"]  # the threshold chosen in training decides
    summary = json.loads((tmp_path / "metrics.json").read_text())
    assert summary["model"]["model"] == str((run / "model.pth").resolve()) and summary["model"]["head"] is None


def test_resume_after_an_interruption_fine_tunes_the_same_model(small_pair_dataset, tmp_path, monkeypatch):
    _train(small_pair_dataset, tmp_path / "whole", *FINE_TUNE, EPOCHS)
    pair_metrics = trainer.pair_metrics
    # Dies in the validation of the second epoch, before its checkpoint.
    monkeypatch.setattr(trainer, "pair_metrics", interrupted_on_call(pair_metrics, 2))
    with pytest.raises(KeyboardInterrupt):
        _train(small_pair_dataset, tmp_path / "resumed", *FINE_TUNE, EPOCHS)
    assert not (tmp_path / "resumed" / "checkpoints" / "epoch_0001.pth").exists()
    monkeypatch.setattr(trainer, "pair_metrics", pair_metrics)
    _train(small_pair_dataset, tmp_path / "resumed", *FINE_TUNE, EPOCHS)
    assert "Resuming from" in (tmp_path / "resumed" / "logs" / "log.txt").read_text()
    whole, resumed = _state(tmp_path / "whole"), _state(tmp_path / "resumed")
    assert whole.keys() == resumed.keys()
    for key in whole:
        torch.testing.assert_close(resumed[key], whole[key], rtol=0, atol=0, msg=key)


def test_two_processes_fine_tune_the_same_model_as_one(fine_tuned, small_pair_dataset, tmp_path):
    """torchrun with 2 processes (gloo, CPU), dropout on, against the one-process run on the same trunk cache."""
    argv = _train_argv(
        small_pair_dataset,
        tmp_path,
        *FINE_TUNE,
        EPOCHS,
        f"vpr.features.cache_dir={fine_tuned['run'] / 'feature_cache'}",
    )
    torchrun("dinov2_vpr.run.train", argv)
    assert "Trunk tokens: 0 of 24" in (tmp_path / "logs" / "log.txt").read_text()
    single, double = (json.loads((run / "train_metrics.json").read_text()) for run in (fine_tuned["run"], tmp_path))
    assert double["best_epoch"] == single["best_epoch"]
    assert double["threshold"] == pytest.approx(single["threshold"], abs=1e-5)
    # The two models describe images alike.
    images = sorted(small_pair_dataset["image_root"].rglob("*.jpg"))
    described = [
        load_place_model(
            model=run, random_backbone=True, config_file=TINY_MODEL_ARGS[1], opts=TINY_MODEL_OPTS
        ).describe(images)
        for run in (fine_tuned["run"], tmp_path)
    ]
    torch.testing.assert_close(described[1], described[0], atol=1e-5, rtol=1e-4)
    # And their weights are alike. Not within 1e-5: the attention's key bias has no gradient (softmax ignores
    # a shift), so AdamW's normalised steps follow the rounding noise of its zero gradient, which the ranks sum
    # differently; a few other near-zero gradients do the same.
    single, double = _state(fine_tuned["run"]), _state(tmp_path)
    for key in single:
        torch.testing.assert_close(double[key], single[key], atol=2e-4, rtol=1e-4, msg=key)


def test_place_training_options_are_refused_on_pair_lists(small_pair_dataset, tmp_path):
    with pytest.raises(InputError, match="vpr.model.method is for place training"):
        _train(small_pair_dataset, tmp_path, "vpr.model.method=salad")
    for option in ("vpr.train.augment=true", "vpr.train.trunk_cache=false"):
        with pytest.raises(InputError, match="are for place training.*pair lists always train on cached"):
            _train(small_pair_dataset, tmp_path, "vpr.model.trainable_blocks=2", option)
    with pytest.raises(InputError, match="trainable_blocks=13 must be between 0 and the backbone's 12 blocks"):
        _train(small_pair_dataset, tmp_path, "vpr.model.trainable_blocks=13")
