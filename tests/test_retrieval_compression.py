"""Large maps: PCA (faiss, against scikit-learn), float16 storage, the Recall@K loss against the full
descriptors, the retrieval options end to end on a tiny BoQ model, and BoQ attention pictures."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.decomposition import PCA as ReferencePCA

from dinov2.utils.errors import InputError
from dinov2_vpr.config import build_vpr_config
from dinov2_vpr.data.synthetic import make_retrieval_dataset
from dinov2_vpr.features.descriptors import load_descriptor_files
from dinov2_vpr.models.build import build_method_model, method_options
from dinov2_vpr.models.released import RELEASED_LAYOUTS
from dinov2_vpr.retrieval.compression import PCA, PCA_FILE, fit_pca
from dinov2_vpr.retrieval.pictures import overlay_heatmap
from dinov2_vpr.retrieval.recall import evaluate_retrieval
from dinov2_vpr.retrieval.report import format_recall_table
from dinov2_vpr.retrieval.search import build_index, describe_index, search
from dinov2_vpr.run import retrieval as retrieval_command

from .conftest import TINY_MODEL_ARGS, TINY_MODEL_OPTS
from .test_method_commands import AGGREGATOR_OPTS, CONFIG_FILE, IMAGE_OPTS


def _unit(array: np.ndarray) -> np.ndarray:
    return (array / np.linalg.norm(array, axis=1, keepdims=True)).astype(np.float32)


def _anisotropic(num: int = 400, dim: int = 48, seed: int = 0) -> np.ndarray:
    """Rows with a clear spectrum: variances 3^2 down to 0.1^2, rotated at random, off-centre."""
    rng = np.random.default_rng(seed)
    rotation, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    scaled = rng.standard_normal((num, dim)) * np.linspace(3.0, 0.1, dim)
    return (scaled @ rotation.T + rng.standard_normal(dim)).astype(np.float32)


@pytest.mark.parametrize("train_size", [None, 40])  # 40 < 48: faiss fits on the Gram matrix instead
def test_pca_spans_the_reference_subspace(train_size):
    data = _anisotropic()
    pca = fit_pca(data, 8, train_size=train_size)
    fitted = data if train_size is None else data[np.sort(np.random.default_rng(0).choice(len(data), 40, False))]
    reference = ReferencePCA(n_components=8, svd_solver="full").fit(fitted.astype(np.float64))
    # Same subspace: the principal angles between the two 8-d subspaces are all zero.
    cosines = np.linalg.svd(pca.projection @ reference.components_.T, compute_uv=False)
    np.testing.assert_allclose(cosines, 1.0, atol=1e-4)
    np.testing.assert_allclose(pca.mean, reference.mean_, atol=1e-4)
    # faiss divides by N, scikit-learn by N - 1.
    np.testing.assert_allclose(
        pca.eigenvalues, reference.explained_variance_ * (len(fitted) - 1) / len(fitted), rtol=1e-3
    )
    # The reduced descriptors (and so every similarity and ranking) agree.
    ours, theirs = pca.transform(data), _unit(reference.transform(data))
    np.testing.assert_allclose(ours @ ours.T, theirs @ theirs.T, atol=1e-4)
    assert ours.dtype == np.float32 and ours.shape == (400, 8)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("train_size", [None, 40])
def test_whitening_gives_unit_variance_on_the_fitted_database(train_size):
    data = _anisotropic()
    pca = fit_pca(data, 8, whiten=True, train_size=train_size)
    fitted = data if train_size is None else data[np.sort(np.random.default_rng(0).choice(len(data), 40, False))]
    projected = pca.project(fitted).astype(np.float64)
    np.testing.assert_allclose(np.cov(projected, rowvar=False, bias=True), np.eye(8), atol=1e-3)
    plain = fit_pca(data, 8, train_size=train_size)
    np.testing.assert_allclose(pca.projection, plain.projection / np.sqrt(plain.eigenvalues)[:, None], rtol=1e-3)


def test_pca_saves_plain_arrays_and_loads_them_back(tmp_path):
    pca = fit_pca(_anisotropic(), 6, whiten=True)
    pca.save(tmp_path / PCA_FILE)
    with np.load(tmp_path / PCA_FILE, allow_pickle=False) as arrays:
        assert sorted(arrays.files) == ["eigenvalues", "mean", "projection", "whiten"]
    loaded = PCA.load(tmp_path / PCA_FILE)
    assert loaded.whiten and (loaded.input_dim, loaded.output_dim) == (48, 6)
    np.testing.assert_array_equal(loaded.transform(_anisotropic(seed=1)), pca.transform(_anisotropic(seed=1)))
    np.savez(tmp_path / "other.npz", mean=pca.mean)
    with pytest.raises(ValueError, match="lacks"):
        PCA.load(tmp_path / "other.npz")


@pytest.mark.parametrize(("dim", "train_size"), [(0, None), (400, None), (49, None), (10, 10)])
def test_fit_pca_rejects_dimensions_out_of_range(dim, train_size):
    with pytest.raises(ValueError, match="PCA dimension"):
        fit_pca(_anisotropic(), dim, train_size=train_size)


@pytest.mark.parametrize("kind", ["exact", "ivf", "hnsw"])
def test_float16_storage_scores_the_rounded_descriptors_in_half_the_memory(kind):
    database = _unit(np.random.default_rng(0).standard_normal((500, 32)))
    queries = _unit(np.random.default_rng(1).standard_normal((20, 32)))
    index = build_index(database, kind, float16=True, nlist=4, nprobe=4)
    assert describe_index(index)["storage"] == "float16"
    scores, rows = search(index, queries, 5)
    rounded = database.astype(np.float16).astype(np.float32)
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ rounded.T, rows, axis=1), atol=1e-6)
    if kind == "exact":
        assert index.sa_code_size() == 2 * 32 == build_index(database).sa_code_size() // 2
        np.testing.assert_array_equal(rows, search(build_index(rounded), queries, 5)[1])


def _nuisance_places(num_places: int = 20, seed: int = 0):
    """Places told apart only by low-variance one-hot codes, beside a stronger 2-d nuisance.

    Each place has 4 database images whose nuisance vectors are at right angles (so the nuisance
    is uncorrelated with the codes, the covariance is block-diagonal and PCA to 2 dimensions keeps
    exactly the nuisance plane) and one query with its own nuisance. The full descriptors always
    find the query's place (code overlap 1 beats nuisance at most 0.25); the 2-d PCA ones find the
    database image whose nuisance angle is closest to the query's.
    """
    rng = np.random.default_rng(seed)
    codes = np.eye(num_places)
    angles = rng.uniform(0, 2 * np.pi, num_places)[:, None] + np.arange(4) * np.pi / 2
    database_angles = angles.ravel()
    query_angles = rng.uniform(0, 2 * np.pi, num_places)

    def rows(place_codes, row_angles):
        nuisance = 0.5 * np.stack([np.cos(row_angles), np.sin(row_angles)], axis=1)
        return _unit(np.concatenate([nuisance, place_codes], axis=1))

    database = rows(np.repeat(codes, 4, axis=0), database_angles)
    queries = rows(codes, query_angles)
    place_xy = np.stack([100.0 * np.arange(num_places), np.zeros(num_places)], axis=1)
    # The expected Recall@1 of the 2-d descriptors: the nearest nuisance angle is the query's place.
    gaps = np.abs(np.angle(np.exp(1j * (query_angles[:, None] - database_angles[None]))))
    expected_pca_recall = float(np.mean(np.argmin(gaps, axis=1) // 4 == np.arange(num_places)))
    return database, queries, np.repeat(place_xy, 4, axis=0), place_xy, expected_pca_recall


@pytest.mark.parametrize("whiten", [False, True])
def test_recall_loss_against_the_full_descriptors(whiten):
    database, queries, database_xy, query_xy, expected = _nuisance_places()
    pca = fit_pca(database, 2, whiten=whiten)
    result = evaluate_retrieval(database, queries, database_xy, query_xy, (1, 5), pca=pca)
    assert result.full_recalls == {1: 1.0, 5: 1.0}
    assert result.recalls[1] == pytest.approx(expected) and expected < 0.5
    assert result.full_recall_loss == {k: 1.0 - result.recalls[k] for k in (1, 5)}
    summary = result.summary()
    assert summary["full_recall_loss@1"] == pytest.approx(1.0 - expected)
    assert (summary["descriptor_dim"], summary["pca_dim"], summary["pca_whiten"], summary["float16"]) == (
        22,
        2,
        whiten,
        False,
    )
    assert "loss vs full (points)" in format_recall_table(result, 25.0)
    assert "descriptors 22-d -> PCA 2" in format_recall_table(result, 25.0)

    # Keeping the codes (12 dimensions) loses nothing; so does float16 storage.
    kept = evaluate_retrieval(database, queries, database_xy, query_xy, (1, 5), pca=fit_pca(database, 12))
    assert kept.recall_loss is None and kept.full_recall_loss == {1: 0.0, 5: 0.0}
    half = evaluate_retrieval(database, queries, database_xy, query_xy, (1, 5), float16=True)
    assert half.recalls == half.full_recalls == {1: 1.0, 5: 1.0} and half.index["storage"] == "float16"


def test_an_approximate_index_on_compressed_descriptors_reports_both_losses():
    database, queries, database_xy, query_xy, _ = _nuisance_places()
    result = evaluate_retrieval(
        database, queries, database_xy, query_xy, (1,), index_kind="hnsw", pca=fit_pca(database, 12), float16=True
    )
    assert result.exact_recalls is not None and result.full_recalls == {1: 1.0}
    assert result.index["kind"] == "hnsw" and result.index["storage"] == "float16"
    table = format_recall_table(result, 25.0)
    assert "exact R@K (%)" in table and "full R@K (%)" in table and "PCA 12 -> float16" in table


def test_overlay_heatmap_colours_the_image():
    image = Image.new("RGB", (40, 30), (128, 128, 128))
    heat = np.zeros((5, 5), dtype=np.float32)
    heat[0, 0] = 1.0
    overlaid = np.asarray(overlay_heatmap(image, heat)).astype(int)
    assert overlaid.shape == (30, 40, 3) and not (overlaid == 128).all()
    assert overlaid[0, 0, 0] > overlaid[0, 0, 2] and overlaid[-1, -1, 2] > overlaid[-1, -1, 0]  # hot red, cold blue
    with pytest.raises(ValueError, match="heatmap"):
        overlay_heatmap(image, np.zeros(5))


# The commands, end to end on a tiny BoQ model in the released layout.


@pytest.fixture(scope="module")
def boq_file(tmp_path_factory) -> Path:
    cfg = build_vpr_config(CONFIG_FILE, [*method_options("boq"), *AGGREGATOR_OPTS["boq"]])
    model = build_method_model(cfg, None, torch.device("cpu"))
    prefix = RELEASED_LAYOUTS["boq"].backbone_prefix
    state = {
        prefix + key.removeprefix("backbone.") if key.startswith("backbone.") else key: value
        for key, value in model.state_dict().items()
    }
    path = tmp_path_factory.mktemp("released") / RELEASED_LAYOUTS["boq"].file_name
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def benchmark(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("compression_data") / "benchmark"
    make_retrieval_dataset(root, num_places=6, queries_per_place=1, image_size=(70, 70))
    return root


def _boq_retrieval(boq_file, benchmark, output: Path, *extra: str) -> dict:
    argv = ["--config-file", CONFIG_FILE, "--method", "boq", "--pretrained-weights", str(boq_file)]
    argv += ["--dataset-folder", str(benchmark), "--recall-values", "1", "5", "--output-dir", str(output)]
    argv += ["--cache-dir", str(output.parent / "cache"), *extra, "--opts", *IMAGE_OPTS]
    return retrieval_command.main(retrieval_command.get_args_parser().parse_args(argv))


@pytest.fixture(scope="module")
def boq_runs(boq_file, benchmark, tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    """The same retrieval plain, compressed, and with attention pictures (descriptors cached once)."""
    root = tmp_path_factory.mktemp("boq_runs")
    options = {
        "plain": ["--num-preds-to-save", "2", "--num-queries-to-save", "2"],
        "compressed": ["--pca-dim", "4", "--pca-whiten", "--float16", "--save-descriptors"],
        "attention": ["--num-preds-to-save", "2", "--num-queries-to-save", "2", "--save-attention"],
    }
    return {
        name: (root / name, _boq_retrieval(boq_file, benchmark, root / name, *extra)) for name, extra in options.items()
    }


def test_retrieval_reports_the_loss_against_the_full_descriptors(boq_runs):
    _, plain = boq_runs["plain"]
    output, metrics = boq_runs["compressed"]
    assert (metrics["descriptor_dim"], metrics["pca_dim"], metrics["pca_whiten"], metrics["float16"]) == (
        64 * 32,
        4,
        True,
        True,
    )
    assert metrics["index_storage"] == "float16" and metrics["files"]["pca"] == PCA_FILE
    for k in (1, 5):
        assert metrics[f"full_R@{k}"] == plain[f"R@{k}"]
        assert metrics[f"full_recall_loss@{k}"] == pytest.approx(plain[f"R@{k}"] - metrics[f"R@{k}"])
    assert json.loads((output / "metrics.json").read_text())["full_recall_loss@1"] == metrics["full_recall_loss@1"]

    # The saved descriptors are the searched ones: reduced by the saved PCA, stored in float16.
    pca = PCA.load(output / PCA_FILE)
    database, _ = load_descriptor_files(output, prefix="database_")
    assert database.dtype == np.float16 and database.shape == (6, 4) and pca.output_dim == 4 and pca.whiten


def test_retrieval_prints_the_loss_column(boq_file, benchmark, boq_runs, capsys):
    output = boq_runs["plain"][0].parent / "printed"  # beside the other runs: their cached descriptors
    _boq_retrieval(boq_file, benchmark, output, "--float16")
    assert "loss vs full (points)" in capsys.readouterr().out


def test_attention_pictures_differ_from_plain_ones(boq_runs):
    plain_output, plain = boq_runs["plain"]
    attention_output, attention = boq_runs["attention"]
    assert plain["files"]["pictures"] == attention["files"]["pictures"] == 2
    for picture in sorted((attention_output / "preds").glob("*.png")):
        plain_picture = np.asarray(Image.open(plain_output / "preds" / picture.name))
        with_attention = np.asarray(Image.open(picture))
        assert plain_picture.shape == with_attention.shape and (plain_picture != with_attention).any()
    assert attention["R@1"] == plain["R@1"]


def _tiny_retrieval(dataset: Path, output: Path, *extra: str) -> dict:
    argv = [*TINY_MODEL_ARGS, "--dataset-folder", str(dataset), "--output-dir", str(output), *extra]
    return retrieval_command.main(retrieval_command.get_args_parser().parse_args([*argv, "--opts", *TINY_MODEL_OPTS]))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--save-attention", "--num-preds-to-save", "1"], "--save-attention needs --method boq"),
        (["--pca-dim", "6"], "--pca-dim 6 must be smaller than the 6 database descriptors"),
        (["--pca-dim", "4", "--pca-train-size", "3"], "--pca-dim 4 must be smaller than the 3 database"),
        (["--pca-whiten"], "give --pca-dim too"),
        (["--pca-dim", "0"], "--pca-dim must be at least 1"),
    ],
)
def test_input_errors(benchmark, tmp_path, extra, message):
    with pytest.raises(InputError, match=message):
        _tiny_retrieval(benchmark, tmp_path, "--recall-values", "1", *extra)


def test_save_attention_needs_pictures(boq_file, benchmark, tmp_path):
    with pytest.raises(InputError, match="give --num-preds-to-save"):
        _boq_retrieval(boq_file, benchmark, tmp_path / "out", "--save-attention")


def test_a_pca_wider_than_the_descriptors_is_an_input_error(benchmark, tmp_path, monkeypatch):
    def three_dimensional(cfg, weights, head_state, paths, output_dir):
        return _unit(np.random.default_rng(0).standard_normal((len(paths), 3)))

    monkeypatch.setattr(retrieval_command, "describe_image_files", three_dimensional)
    with pytest.raises(InputError, match="--pca-dim 4 exceeds the descriptor dimension 3"):
        _tiny_retrieval(benchmark, tmp_path, "--recall-values", "1", "--pca-dim", "4")
