"""Every command and the Python API with ``--method salad|boq``: released-layout files of a tiny ViT-S/14.

The files are written here in the released layouts (SALAD in a Lightning ``state_dict`` wrapper, BoQ
flat) from random models with small aggregators, so the commands read them exactly as they read
``dino_salad.ckpt`` and ``dinov2_12288.pth``.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dinov2_vpr.config import build_vpr_config
from dinov2_vpr.data.images import list_images
from dinov2_vpr.data.synthetic import make_retrieval_dataset, make_sequence
from dinov2_vpr.features.descriptors import load_descriptor_files
from dinov2_vpr.models.build import build_method_model, method_options
from dinov2_vpr.models.descriptor import load_place_model
from dinov2_vpr.models.released import RELEASED_LAYOUTS
from dinov2_vpr.run import eval as eval_command
from dinov2_vpr.run import export as export_command
from dinov2_vpr.run import extract as extract_command
from dinov2_vpr.run import loops as loops_command
from dinov2_vpr.run import retrieval as retrieval_command

from .conftest import REPO_ROOT

CONFIG_FILE = str(REPO_ROOT / "dinov2/configs/eval/vits14_pretrain.yaml")
# 70x70 images: a 5x5 grid, more patches than the 8 SALAD clusters.
IMAGE_OPTS = ["vpr.data.image_size=[70,70]", "vpr.data.num_workers=0", "vpr.features.precision=fp32"]
AGGREGATOR_OPTS = {
    "salad": ["vpr.model.aggregator.salad.num_clusters=8", "vpr.model.aggregator.salad.cluster_dim=16"],
    "boq": ["vpr.model.aggregator.boq.proj_channels=64", "vpr.model.aggregator.boq.num_queries=8"],
}
DIMENSIONS = {"salad": 256 + 8 * 16, "boq": 64 * 32}
METHODS = sorted(AGGREGATOR_OPTS)


@pytest.fixture(scope="module")
def released(tmp_path_factory) -> dict[str, Path]:
    """A file in each method's released layout."""
    root = tmp_path_factory.mktemp("released")
    files = {}
    for method in METHODS:
        cfg = build_vpr_config(CONFIG_FILE, [*method_options(method), *AGGREGATOR_OPTS[method]])
        model = build_method_model(cfg, None, torch.device("cpu"))
        prefix = RELEASED_LAYOUTS[method].backbone_prefix
        state = {
            prefix + key.removeprefix("backbone.") if key.startswith("backbone.") else key: value
            for key, value in model.state_dict().items()
        }
        files[method] = root / RELEASED_LAYOUTS[method].file_name
        torch.save({"state_dict": state} if method == "salad" else state, files[method])
    return files


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("method_data")
    make_retrieval_dataset(root / "benchmark", num_places=6, queries_per_place=1, image_size=(70, 70))
    sequence = make_sequence(
        root / "sequence", num_frames=12, revisit_segments=0, segment_length=2, image_size=(70, 70)
    )
    return {"benchmark": root / "benchmark", "sequence": sequence["images"]}


def model_args(method: str, released: dict[str, Path]) -> list[str]:
    return ["--config-file", CONFIG_FILE, "--method", method, "--pretrained-weights", str(released[method])]


def api_model(method: str, released: dict[str, Path]):
    return load_place_model(
        pretrained_weights=released[method], config_file=CONFIG_FILE, opts=IMAGE_OPTS, method=method
    )


@pytest.mark.parametrize("method", METHODS)
def test_the_api_loads_the_released_layout_with_the_official_preprocessing(method, released, data):
    model = api_model(method, released)
    assert model.output_dim == DIMENSIONS[method] and model.settings["method"] == method
    assert model.transform.resize == {"salad": "pil_bilinear", "boq": "tensor_bicubic_antialias"}[method]
    preset = load_place_model(pretrained_weights=released[method], config_file=CONFIG_FILE, method=method)
    assert preset.transform.size == (322, 322)
    images = list_images(data["benchmark"] / "database")[:3]
    descriptors = model.describe(images)
    torch.testing.assert_close(descriptors.norm(dim=1), torch.ones(3))
    with torch.no_grad():
        eager = model(torch.stack([model.transform(Image.open(path)) for path in images]))
    torch.testing.assert_close(descriptors, eager, rtol=0, atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_extract_caches_the_descriptors_by_the_file_content(method, released, data, tmp_path, capsys):
    images = data["sequence"]
    argv = [*model_args(method, released), "--images", str(images), "--output", str(tmp_path / "first")]
    cache = ["--cache-dir", str(tmp_path / "cache"), "--opts", *IMAGE_OPTS]
    info = extract_command.main(extract_command.get_args_parser().parse_args([*argv, *cache]))
    assert info["dimension"] == DIMENSIONS[method] and info["model"]["method"] == method
    descriptors, paths = load_descriptor_files(tmp_path / "first")
    expected = api_model(method, released).describe(paths).numpy()
    np.testing.assert_allclose(descriptors, expected, atol=1e-5)

    # The same file under another name: its descriptors come from the cache.
    renamed = tmp_path / "renamed.ckpt"
    shutil.copy(released[method], renamed)
    argv = [*model_args(method, {method: renamed}), "--images", str(images), "--output", str(tmp_path / "second")]
    extract_command.main(extract_command.get_args_parser().parse_args([*argv, *cache]))
    assert "need encoding" not in (tmp_path / "second" / "logs" / "log.txt").read_text()
    np.testing.assert_array_equal(load_descriptor_files(tmp_path / "second")[0], descriptors)


@pytest.mark.parametrize("method", METHODS)
def test_retrieval(method, released, data, tmp_path):
    argv = [*model_args(method, released), "--dataset-folder", str(data["benchmark"]), "--recall-values", "1", "5"]
    argv += ["--output-dir", str(tmp_path), "--opts", *IMAGE_OPTS]
    metrics = retrieval_command.main(retrieval_command.get_args_parser().parse_args(argv))
    assert 0 <= metrics["R@1"] <= metrics["R@5"] == 1.0
    assert metrics["model"]["method"] == method and (tmp_path / "predictions.csv").exists()


@pytest.mark.parametrize("method", METHODS)
def test_loops(method, released, data, tmp_path):
    argv = [*model_args(method, released), "--images", str(data["sequence"]), "--exclude-recent", "2"]
    argv += ["--threshold", "0.5", "--output-dir", str(tmp_path), "--opts", *IMAGE_OPTS]
    loops_command.main(loops_command.get_args_parser().parse_args(argv))
    assert json.loads((tmp_path / "loops.json").read_text())["model"]["method"] == method


@pytest.mark.parametrize("method", METHODS)
def test_eval(method, released, small_pair_dataset, tmp_path):
    data = small_pair_dataset
    argv = [*model_args(method, released), "--dataset-root", str(data["image_root"])]
    argv += ["--pair-lists", str(data["test_lists"][0]), "--threshold", "0.5", "--output-dir", str(tmp_path)]
    result = eval_command.main(eval_command.get_args_parser().parse_args([*argv, "--opts", *IMAGE_OPTS]))
    assert result["lists"][0]["num_pairs"] > 0 and (tmp_path / "metrics.json").exists()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("export_format", ["torchscript", "onnx"])
def test_export_gives_the_eager_descriptors(method, export_format, released, tmp_path):
    output = tmp_path / f"{method}.{'pt' if export_format == 'torchscript' else 'onnx'}"
    argv = [*model_args(method, released), "--format", export_format, "--output", str(output), "--opts", *IMAGE_OPTS]
    info = export_command.main(export_command.get_args_parser().parse_args(argv))
    assert info["output_dim"] == DIMENSIONS[method] and info["input_shape"] == ["batch", 3, 70, 70]
    assert info["max_abs_difference"] <= 1e-4 and info["model"]["method"] == method
