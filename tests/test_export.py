"""Export of backbone and head to TorchScript and ONNX: the exported files give the eager descriptors."""

import json
import warnings

import numpy as np
import onnxruntime
import pytest
import torch
from PIL import Image

from dinov2_vpr.data.images import list_images
from dinov2_vpr.models import export
from dinov2_vpr.models.descriptor import load_place_model
from dinov2_vpr.run import export as export_command

from .conftest import REPO_ROOT, TINY_MODEL_OPTS
from .trained_head import HEAD_OPTS, train_tiny_head

CONFIG_FILE = str(REPO_ROOT / "dinov2/configs/eval/vits14_pretrain.yaml")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("export_head")
    head_file = train_tiny_head(root)
    model = load_place_model(head=head_file, config_file=CONFIG_FILE, opts=HEAD_OPTS, random_backbone=True)
    images = torch.stack([model.transform(Image.open(path)) for path in list_images(root / "data")[:5]])
    with torch.no_grad():
        eager = model(images).numpy()
    return head_file, images, eager


@pytest.fixture(scope="module")
def gem_model():
    return load_place_model(config_file=CONFIG_FILE, opts=TINY_MODEL_OPTS, random_backbone=True, zero_shot="gem")


def _export(head_file, export_format, output):
    argv = [
        "--config-file",
        CONFIG_FILE,
        "--random-backbone",
        "--head",
        str(head_file),
        "--format",
        export_format,
        "--output",
        str(output),
        "--opts",
        *HEAD_OPTS,
    ]
    return export_command.main(export_command.get_args_parser().parse_args(argv))


def test_torchscript_export_gives_the_eager_descriptors(trained, tmp_path):
    head_file, images, eager = trained
    info = _export(head_file, "torchscript", tmp_path / "place_model.pt")
    assert (
        info["max_abs_difference"] <= 1e-4 and info["output_dim"] == 16 and info["input_shape"] == ["batch", 3, 56, 56]
    )
    assert json.loads((tmp_path / "place_model.pt.json").read_text())["model"]["head"] == str(head_file.resolve())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated upstream
        loaded = torch.jit.load(str(tmp_path / "place_model.pt"))
    with torch.no_grad():
        np.testing.assert_allclose(loaded(images).numpy(), eager, atol=1e-4)  # 5 real images; traced on 2


def test_onnx_export_gives_the_eager_descriptors(trained, tmp_path):
    head_file, images, eager = trained
    info = _export(head_file, "onnx", tmp_path / "place_model.onnx")
    assert info["max_abs_difference"] <= 1e-4
    session = onnxruntime.InferenceSession(str(tmp_path / "place_model.onnx"), providers=["CPUExecutionProvider"])
    assert [node.name for node in session.get_inputs()] == ["images"]
    (descriptors,) = session.run(["descriptors"], {"images": images.numpy()})
    np.testing.assert_allclose(descriptors, eager, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(descriptors, axis=1), 1.0, atol=1e-5)


def test_zero_shot_model_exports_through_the_api(gem_model, tmp_path):
    info = export.export_model(gem_model, tmp_path / "gem.pt", "torchscript")
    assert info["output_dim"] == 384 and info["max_abs_difference"] <= 1e-4
    assert gem_model.backbone.pos_embed.shape[1] == 1 + 37 * 37  # the model itself keeps its embedding


def test_a_mismatching_export_is_not_kept(gem_model, tmp_path, monkeypatch):
    original = export.run_exported
    monkeypatch.setattr(export, "run_exported", lambda *args: original(*args) + 1e-3)
    with pytest.raises(export.ExportMismatchError, match=r"up to 1\.0\de-03 .* was not written"):
        export.export_model(gem_model, tmp_path / "model.onnx", "onnx")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("export_format", export.EXPORT_FORMATS)
def test_a_non_square_image_size_exports_with_the_interpolation_traced(export_format, tmp_path):
    model = load_place_model(
        config_file=CONFIG_FILE,
        opts=[*TINY_MODEL_OPTS, "vpr.data.image_size=[56,84]"],
        random_backbone=True,
        zero_shot="gem",
    )
    report = export.export_model(model, tmp_path / f"model.{export_format}", export_format)
    assert report["max_abs_difference"] <= 1e-4
