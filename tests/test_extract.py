"""The extract command: descriptor files in image order, float16, the feature cache, torchrun."""

import json

import numpy as np
import pytest

from dinov2.run import submit
from dinov2.utils.errors import InputError
from dinov2_vpr.data.images import list_images
from dinov2_vpr.data.synthetic import make_retrieval_dataset
from dinov2_vpr.features import extract as feature_extraction
from dinov2_vpr.features.descriptors import load_descriptor_files
from dinov2_vpr.models.descriptor import load_place_model
from dinov2_vpr.run import extract as extract_command

from .conftest import TINY_MODEL_ARGS, TINY_MODEL_OPTS, torchrun


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """12 generated images (6 places, database and queries) in nested folders."""
    root = tmp_path_factory.mktemp("extract_images")
    make_retrieval_dataset(root, num_places=6, queries_per_place=1, image_size=(56, 56))
    return root


def _extract(images, output, *extra):
    argv = [*TINY_MODEL_ARGS, "--images", str(images), "--output", str(output), *extra, "--opts", *TINY_MODEL_OPTS]
    return extract_command.main(extract_command.get_args_parser().parse_args(argv))


@pytest.fixture(scope="module")
def first_run(image_folder, tmp_path_factory):
    """Zero-shot GeM descriptors of the folder; the files as written (a later test rewrites them)."""
    output = tmp_path_factory.mktemp("extract_run")
    info = _extract(image_folder, output, "--zero-shot", "gem")
    descriptors, paths = load_descriptor_files(output)
    return {"output": output, "info": info, "descriptors": descriptors, "paths": paths}


def test_descriptor_files_follow_the_image_order(image_folder, first_run):
    output, info, descriptors = first_run["output"], first_run["info"], first_run["descriptors"]
    paths = list_images(image_folder)
    assert first_run["paths"] == [path.resolve() for path in paths]
    assert descriptors.dtype == np.float32 and descriptors.shape == (12, 384)
    np.testing.assert_allclose(np.linalg.norm(descriptors, axis=1), 1.0, atol=1e-5)
    assert json.loads((output / "descriptors.json").read_text()) == info
    assert info["dimension"] == 384 and info["count"] == 12 and info["settings"]["dtype"] == "float32"
    assert info["model"]["zero_shot"] == "gem" and info["model"]["head_input"] == "gem"
    model = load_place_model(
        config_file=TINY_MODEL_ARGS[1], opts=TINY_MODEL_OPTS, random_backbone=True, zero_shot="gem"
    )
    np.testing.assert_allclose(model.describe(paths).numpy(), descriptors, atol=1e-5)  # the API agrees


def test_second_run_reads_the_cache_and_writes_float16(image_folder, first_run, monkeypatch):
    output = first_run["output"]

    def no_encoding(*args, **kwargs):
        raise AssertionError("the backbone ran although every image is in the cache")

    monkeypatch.setattr(feature_extraction, "_encode_into_cache", no_encoding)
    info = _extract(image_folder, output, "--zero-shot", "gem", "--float16")
    descriptors, _ = load_descriptor_files(output)
    assert descriptors.dtype == np.float16 and info["settings"]["dtype"] == "float16"
    np.testing.assert_allclose(descriptors.astype(np.float32), first_run["descriptors"], atol=1e-3)
    assert "All 12 images found in the feature cache" in (output / "logs" / "log.txt").read_text()


def test_a_list_file_keeps_its_order(image_folder, first_run, tmp_path):
    reference, reference_paths = first_run["descriptors"], first_run["paths"]
    listed = list(reversed(reference_paths))[:5]
    list_file = tmp_path / "images.txt"
    list_file.write_text("# five images, newest first\n" + "".join(f"{path}\n" for path in listed))
    _extract(
        list_file, tmp_path / "out", "--zero-shot", "gem", "--cache-dir", str(first_run["output"] / "feature_cache")
    )
    descriptors, paths = load_descriptor_files(tmp_path / "out")
    assert paths == listed
    rows = [reference_paths.index(path) for path in listed]
    np.testing.assert_allclose(descriptors, reference[rows], atol=1e-6)


def test_contradictory_options_stop_before_any_work(image_folder, tmp_path):
    with pytest.raises(InputError, match="either --head or --zero-shot"):
        _extract(image_folder, tmp_path, "--head", str(tmp_path / "head.pth"), "--zero-shot", "cls")
    argv = ["--config-file", TINY_MODEL_ARGS[1], "--images", str(image_folder), "--output", str(tmp_path)]
    with pytest.raises(InputError, match="--pretrained-weights is required"):
        extract_command.main(extract_command.get_args_parser().parse_args(argv))
    assert not (tmp_path / "descriptors.npy").exists()


def test_two_torchrun_processes_share_the_encoding(image_folder, first_run, tmp_path):
    output = tmp_path / "torchrun"
    argv = [*TINY_MODEL_ARGS, "--images", str(image_folder), "--output", str(output), "--zero-shot", "gem"]
    torchrun("dinov2_vpr.run.extract", [*argv, "--opts", *TINY_MODEL_OPTS])
    for log in ("log.txt", "log.txt.rank1"):
        assert "12 of 12 images need encoding; this rank encodes 6" in (output / "logs" / log).read_text()
    descriptors, paths = load_descriptor_files(output)
    assert paths == first_run["paths"]
    np.testing.assert_allclose(descriptors, first_run["descriptors"], atol=1e-5)


def test_launcher_options_are_accepted(image_folder, tmp_path, monkeypatch):
    submitted = []
    monkeypatch.setattr(submit, "submit_job", lambda args, main: submitted.append((args, main)))
    argv = [
        *TINY_MODEL_ARGS,
        "--images",
        str(image_folder),
        "--output",
        str(tmp_path),
        "--slurm",
        "--ngpus",
        "0",
        "--nodes",
        "2",
    ]
    submit.submit_or_run(extract_command.get_args_parser().parse_args(argv), extract_command.main)
    ((args, main),) = submitted
    assert main is extract_command.main and args.nodes == 2 and args.ngpus == 0 and args.output_dir == str(tmp_path)
    assert submit.executor_parameters(args)["nodes"] == 2
