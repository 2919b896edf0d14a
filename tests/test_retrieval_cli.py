"""The retrieval command: Recall@K against brute force, predictions, pictures, approximate indexes."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dinov2.utils.errors import InputError
from dinov2_vpr.data.synthetic import make_retrieval_dataset
from dinov2_vpr.features.descriptors import load_descriptor_files
from dinov2_vpr.run import retrieval as retrieval_command

from .conftest import TINY_MODEL_ARGS, TINY_MODEL_OPTS

K_VALUES = (1, 5, 10, 20)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """40 places 50 m apart: 40 database images and 40 queries, each query with one positive."""
    root = tmp_path_factory.mktemp("retrieval_data")
    make_retrieval_dataset(root, num_places=40, queries_per_place=1, image_size=(56, 56))
    return root


def _retrieval(dataset, output, *extra):
    argv = [
        *TINY_MODEL_ARGS,
        "--dataset-folder",
        str(dataset),
        "--output-dir",
        str(output),
        "--zero-shot",
        "gem",
        *extra,
        "--opts",
        *TINY_MODEL_OPTS,
    ]
    return retrieval_command.main(retrieval_command.get_args_parser().parse_args(argv))


@pytest.fixture(scope="module")
def exact_run(dataset, tmp_path_factory):
    output = tmp_path_factory.mktemp("retrieval_exact")
    metrics = _retrieval(
        dataset, output, "--save-descriptors", "--num-preds-to-save", "3", "--num-queries-to-save", "4"
    )
    return output, metrics


def _utm(path: Path) -> tuple[float, float]:
    fields = path.name.split("@")  # @east@north@zone@letter@...
    return float(fields[1]), float(fields[2])


def _brute_force(output: Path, radius: float = 25.0):
    database, database_paths = load_descriptor_files(output, prefix="database_")
    queries, query_paths = load_descriptor_files(output, prefix="queries_")
    ranking = np.argsort(-(queries.astype(np.float64) @ database.T), axis=1, kind="stable")
    database_xy = np.array([_utm(path) for path in database_paths])
    query_xy = np.array([_utm(path) for path in query_paths])
    near = np.linalg.norm(query_xy[:, None] - database_xy[None], axis=2) <= radius
    hits = np.take_along_axis(near, ranking, axis=1)
    recalls = {k: float(hits[:, :k].any(axis=1).mean()) for k in K_VALUES}
    return recalls, ranking, hits, database_paths, query_paths


def test_recall_at_k_equals_brute_force_on_the_saved_descriptors(exact_run, capsys):
    output, metrics = exact_run
    recalls, ranking, hits, database_paths, query_paths = _brute_force(output)
    assert len(database_paths) == 40 and len(query_paths) == 40
    for k in K_VALUES:
        assert metrics[f"R@{k}"] == pytest.approx(recalls[k], abs=1e-9)
    assert json.loads((output / "metrics.json").read_text())["R@1"] == metrics["R@1"]
    assert metrics["index_kind"] == "exact" and metrics["queries_without_positives"] == 0
    with open(output / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [Path(row["query"]).resolve() for row in rows] == query_paths
    assert [Path(row["rank1_database"]).resolve() for row in rows] == [database_paths[i] for i in ranking[:, 0]]
    assert [int(row["rank1_positive"]) for row in rows] == hits[:, 0].astype(int).tolist()


def test_pictures_and_the_recall_plot_are_png_files(exact_run):
    output, metrics = exact_run
    pictures = sorted((output / "preds").glob("query_*.png"))
    assert len(pictures) == metrics["files"]["pictures"] == 4
    for picture in [*pictures, output / "recall_at_k.png"]:
        with Image.open(picture) as image:
            assert image.format == "PNG"
    lines = pictures[0].with_suffix(".txt").read_text().splitlines()
    assert lines[0].startswith("query\t") and len(lines) == 2 + 3  # query, header, top 3


def test_approximate_index_reports_its_loss_against_exact(dataset, exact_run, tmp_path, capsys):
    exact_output, exact = exact_run
    metrics = _retrieval(
        dataset,
        tmp_path,
        "--index",
        "hnsw",
        "--hnsw-m",
        "4",
        "--ef-search",
        "2",
        "--num-preds-to-save",
        "2",
        "--save-only-wrong-preds",
        "--cache-dir",
        str(exact_output / "feature_cache"),
    )
    assert metrics["index_kind"] == "hnsw" and metrics["index_hnsw_m"] == 4 and metrics["index_ef_search"] == 2
    for k in K_VALUES:
        assert metrics[f"exact_R@{k}"] == exact[f"R@{k}"]
        assert metrics[f"recall_loss@{k}"] == pytest.approx(exact[f"R@{k}"] - metrics[f"R@{k}"])
    table = capsys.readouterr().out
    assert "index hnsw" in table and "exact R@K (%)" in table and "loss (points)" in table
    wrong = {int(path.stem.split("_")[1]) for path in (tmp_path / "preds").glob("query_*.png")}
    with open(tmp_path / "predictions.csv", newline="") as handle:
        top1_wrong = {row for row, line in enumerate(csv.DictReader(handle)) if line["rank1_positive"] == "0"}
    assert top1_wrong and wrong == top1_wrong and metrics["files"]["pictures"] == len(top1_wrong)


def test_ivf_index_with_the_given_lists(dataset, exact_run, tmp_path):
    exact_output, exact = exact_run
    metrics = _retrieval(
        dataset, tmp_path, "--index", "ivf", "--nlist", "1", "--cache-dir", str(exact_output / "feature_cache")
    )
    assert metrics["index_kind"] == "ivf" and metrics["index_nlist"] == 1 and metrics["index_nprobe"] == 1
    assert all(metrics[f"R@{k}"] == exact[f"R@{k}"] for k in K_VALUES)  # one list: the search is exhaustive


def test_bad_options_and_names_stop_before_any_work(dataset, tmp_path):
    with pytest.raises(InputError, match="--num-preds-to-save must be between 0 and the largest recall value 5"):
        _retrieval(dataset, tmp_path, "--recall-values", "1", "5", "--num-preds-to-save", "6")
    with pytest.raises(InputError, match="exceed the 40 database images"):
        _retrieval(dataset, tmp_path, "--recall-values", "1", "50")
    broken = tmp_path / "broken"
    shutil.copytree(dataset, broken)
    next((broken / "database").glob("*.jpg")).rename(broken / "database" / "no_position.jpg")
    with pytest.raises(ValueError, match="no_position.jpg: file name does not carry UTM coordinates"):
        _retrieval(broken, tmp_path / "out")
    assert not (tmp_path / "out" / "feature_cache").exists()
