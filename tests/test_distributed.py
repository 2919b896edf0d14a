"""Two processes (torchrun, gloo, CPU) against one: the same feature cache and the same trained head.

The runs share nothing but the data, the seed and the default head config (dropout included). The
two-process run extracts into its own cache; the one-process training reads that cache, so that the
comparison of the heads measures training alone: features extracted with other thread counts differ
in their last bits, which the head's input standardisation would amplify.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from dinov2 import distributed
from dinov2_vpr.config import build_vpr_config
from dinov2_vpr.data.synthetic import make_pair_dataset
from dinov2_vpr.features.pipeline import image_features
from dinov2_vpr.features.pooling import FEATURE_NAMES
from dinov2_vpr.run import train as train_command
from tests.conftest import TINY_MODEL_ARGS, torchrun
from tests.tiny_vpr import IMAGE_SIZE, TINY_OPTS, assert_same_heads, load_heads, training_options

EPOCHS = 4


def read_cache_rows(cache_root: Path) -> tuple[list[str], dict[str, dict[str, torch.Tensor]]]:
    """Every identity in every chunk file under ``cache_root`` (repeats kept), and the features of each."""
    identities, features = [], {}
    for chunk_file in sorted(cache_root.glob("*/chunk-*.pt")):
        chunk = torch.load(chunk_file, weights_only=True)
        identities += chunk["identities"]
        for row, identity in enumerate(chunk["identities"]):
            features[identity] = {name: chunk["features"][name][row] for name in FEATURE_NAMES}
    return identities, features


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same training (same global batch, seed and default head) as 2 torchrun processes and in this process."""
    root = tmp_path_factory.mktemp("distributed")
    data = make_pair_dataset(root / "data", num_places=24, image_size=IMAGE_SIZE)
    single, double = root / "single", root / "double"

    torchrun("dinov2_vpr.run.train", training_options(data, double, EPOCHS))
    argv = training_options(data, single, EPOCHS, cache_dir=double / "feature_cache")
    train_command.main(train_command.get_args_parser().parse_args(argv))
    assert not distributed.is_enabled()
    return {"single": single, "double": double}


def test_two_processes_train_the_same_head_as_one(runs: dict[str, Path]) -> None:
    assert "dropout" not in " ".join(TINY_OPTS), "the comparison must use the default head, dropout included"
    assert "Extracting features" not in (runs["single"] / "logs" / "log.txt").read_text(), "features were re-encoded"
    assert_same_heads(load_heads(runs["double"], EPOCHS), load_heads(runs["single"], EPOCHS), atol=1e-5, rtol=1e-4)
    single, double = (torch.load(runs[name] / "head.pth", weights_only=True) for name in ("single", "double"))
    assert single["config"]["vpr"]["head"]["dropout"] == 0.1
    assert double["best_epoch"] == single["best_epoch"]
    assert double["threshold"] == pytest.approx(single["threshold"], abs=1e-5)


def test_sharded_extraction_fills_the_same_cache_and_encodes_each_image_once(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    double_ids, double_features = read_cache_rows(runs["double"] / "feature_cache")
    assert len(double_ids) == len(set(double_ids)), "an image was encoded twice"

    # The same images encoded by one process, into a cache of its own.
    cfg = build_vpr_config(TINY_MODEL_ARGS[1], [*TINY_OPTS, f"vpr.features.cache_dir={tmp_path / 'cache'}"])
    paths = [Path(identity.split("|")[0]) for identity in double_ids]
    single_features, _ = image_features(cfg, None, paths, tmp_path)
    single_ids, _ = read_cache_rows(tmp_path / "cache")
    assert sorted(single_ids) == sorted(double_ids), "the two runs encoded different images"
    for row, identity in enumerate(double_ids):
        for name in FEATURE_NAMES:
            torch.testing.assert_close(
                double_features[identity][name], single_features[name][row], rtol=1e-4, atol=1e-5
            )

    # Each rank encoded its own part, together all of them.
    logs = [(runs["double"] / "logs" / name).read_text() for name in ("log.txt", "log.txt.rank1")]
    shares = [int(re.search(r"this rank encodes (\d+)", log).group(1)) for log in logs]
    assert min(shares) > 0 and sum(shares) == len(double_ids), shares
