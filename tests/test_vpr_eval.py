"""The evaluation command: answer files, scores, metrics against scikit-learn, pictures, zero-shot."""

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import average_precision_score, roc_auc_score

from dinov2.utils.errors import InputError
from dinov2_vpr.run import demo
from dinov2_vpr.run import eval as eval_command
from dinov2_vpr.run import train as train_command

from .conftest import TINY_MODEL_ARGS, TINY_MODEL_OPTS


@pytest.fixture(scope="module")
def trained_run(small_pair_dataset, tmp_path_factory):
    output = tmp_path_factory.mktemp("trained")
    argv = [
        *TINY_MODEL_ARGS,
        "--train-path",
        str(small_pair_dataset["train_dir"]),
        "--image-root",
        str(small_pair_dataset["image_root"]),
        "--split",
        "--output-dir",
        str(output),
        "--cache-dir",
        str(output / "cache"),
        "--opts",
        *TINY_MODEL_OPTS,
        "vpr.train.epochs=3",
    ]
    train_command.main(train_command.get_args_parser().parse_args(argv))
    return output


def _evaluate(dataset, output_dir, *extra, opts=()):
    lists = [*map(str, dataset["test_lists"]), str(dataset["final_list"])]
    argv = [
        *TINY_MODEL_ARGS,
        "--dataset-root",
        str(dataset["image_root"]),
        "--pair-lists",
        *lists,
        "--output-dir",
        str(output_dir),
        *extra,
        "--opts",
        *TINY_MODEL_OPTS,
        *opts,
    ]
    return eval_command.main(eval_command.get_args_parser().parse_args(argv))


def test_evaluation_writes_answers_scores_metrics_and_pictures(small_pair_dataset, trained_run, tmp_path):
    results = _evaluate(
        small_pair_dataset, tmp_path, "--head", str(trained_run), "--cache-dir", str(trained_run / "cache")
    )
    threshold = torch.load(trained_run / "head.pth", weights_only=True)["threshold"]
    assert results["threshold"] == threshold
    final = small_pair_dataset["final_list"]
    answers = (tmp_path / f"{final.stem}_result.txt").read_text().splitlines()
    assert len(answers) == len(final.read_text().splitlines()) and set(answers) <= {"0", "1"}
    summary = json.loads((tmp_path / "metrics.json").read_text())
    for list_file in small_pair_dataset["test_lists"]:
        with open(tmp_path / f"{list_file.stem}_scores.csv") as handle:
            rows = list(csv.DictReader(handle))
        listed = [line.split(", ") for line in list_file.read_text().splitlines()]
        assert [[r["query"], r["reference"], r["label"]] for r in rows] == listed  # input order
        labels = np.array([int(r["label"]) for r in rows])
        scores = np.array([float(r["similarity"]) for r in rows])
        metrics = next(m for m in summary["lists"] if m["name"] == list_file.stem)
        assert metrics["average_precision"] == pytest.approx(average_precision_score(labels, scores), abs=1e-5)
        assert metrics["roc_auc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-5)
        decisions = (tmp_path / f"{list_file.stem}_result.txt").read_text().split()
        assert decisions == [str(int(s >= threshold)) for s in scores]
        for picture in ("pr_curve", "similarity_histogram"):
            with Image.open(tmp_path / f"{list_file.stem}_{picture}.png") as image:
                assert image.format == "PNG" and image.width > 200


def test_zero_shot_is_the_raw_class_token_cosine(small_pair_dataset, trained_run, tmp_path):
    with pytest.raises(InputError, match="zero-shot evaluation needs --threshold"):
        _evaluate(small_pair_dataset, tmp_path, "--cache-dir", str(trained_run / "cache"))
    _evaluate(small_pair_dataset, tmp_path, "--threshold", "0.5", "--cache-dir", str(trained_run / "cache"))
    from dinov2_vpr.features.cache import FeatureCache, image_identity

    cache_folder = next((trained_run / "cache").iterdir())
    cache = FeatureCache(trained_run / "cache", json.loads((cache_folder / "settings.json").read_text()))
    list_file = small_pair_dataset["test_lists"][0]
    with open(tmp_path / f"{list_file.stem}_scores.csv") as handle:
        row = next(csv.DictReader(handle))
    root = small_pair_dataset["image_root"]
    cls = cache.load([image_identity(root / row["query"]), image_identity(root / row["reference"])])["cls"]
    expected = torch.nn.functional.cosine_similarity(cls[0], cls[1], dim=0).item()
    assert float(row["similarity"]) == pytest.approx(expected, abs=1e-5)


def test_head_trained_with_other_preprocessing_is_refused(small_pair_dataset, trained_run, tmp_path):
    with pytest.raises(ValueError, match=r"vpr.data.image_size differs from the training of .*head.pth"):
        _evaluate(small_pair_dataset, tmp_path, "--head", str(trained_run), opts=["vpr.data.image_size=[42,42]"])


def test_demo_runs_end_to_end(tmp_path, capsys):
    args = demo.get_args_parser().parse_args(["--output-dir", str(tmp_path), "--num-places", "12", "--epochs", "2"])
    results = demo.main(args)
    assert [r["name"] for r in results["lists"]][-1].endswith("val_final")
    assert (tmp_path / "train" / "head.pth").exists()
    assert "accuracy" in capsys.readouterr().out


def test_demo_fine_tunes_the_last_blocks_on_request(tmp_path, capsys):
    argv = ["--output-dir", str(tmp_path), "--num-places", "12", "--epochs", "2", "--trainable-blocks", "2"]
    results = demo.main(demo.get_args_parser().parse_args(argv))
    assert (tmp_path / "train" / "model.pth").exists() and not (tmp_path / "train" / "head.pth").exists()
    threshold = torch.load(tmp_path / "train" / "model.pth", weights_only=True)["threshold"]
    assert results["threshold"] == threshold  # evaluated with --model and its threshold
    assert "with the last 2 blocks and the head" in capsys.readouterr().out
