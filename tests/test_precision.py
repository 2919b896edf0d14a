"""``vpr.features.precision``: bf16 autocast on CPUs with native bf16, fp32 elsewhere, forced values, cache keys."""

from pathlib import Path

import pytest
import torch

from dinov2.utils.errors import InputError
from dinov2_vpr.config import build_vpr_config
from dinov2_vpr.data.images import list_images
from dinov2_vpr.data.synthetic import make_retrieval_dataset
from dinov2_vpr.data.transforms import ImageTransform
from dinov2_vpr.features.cache import settings_digest
from dinov2_vpr.models import backbone as backbone_module
from dinov2_vpr.models.backbone import cpu_has_native_bf16, feature_settings, features_autocast_dtype
from dinov2_vpr.models.descriptor import load_place_model

from .conftest import REPO_ROOT, TINY_MODEL_OPTS

CONFIG_FILE = str(REPO_ROOT / "dinov2/configs/eval/vits14_pretrain.yaml")
X86 = "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu sse2 avx2 avx512f {extra}\n"
ARM = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes {extra}\nCPU implementer\t: 0x41\n"


@pytest.mark.parametrize(
    ("text", "native"),
    [
        (X86.format(extra="avx512_bf16 amx_tile"), True),
        (X86.format(extra="amx_bf16"), True),
        (X86.format(extra="avx512_vnni"), False),
        (ARM.format(extra="bf16 i8mm"), True),
        (ARM.format(extra="sve"), False),
    ],
)
def test_native_bf16_is_read_from_the_cpu_flags(text, native, tmp_path):
    (tmp_path / "cpuinfo").write_text(text)
    assert cpu_has_native_bf16(tmp_path / "cpuinfo") is native


def test_without_cpuinfo_the_cpu_is_taken_as_not_native(tmp_path):
    assert cpu_has_native_bf16(tmp_path / "absent") is False


@pytest.mark.parametrize("native", [True, False])
def test_auto_is_bf16_only_on_cpus_with_native_bf16(native, monkeypatch):
    monkeypatch.setattr(backbone_module, "cpu_has_native_bf16", lambda: native)
    cfg = build_vpr_config(CONFIG_FILE)
    assert cfg.vpr.features.precision == "auto"
    assert features_autocast_dtype(cfg, torch.device("cpu")) == (torch.bfloat16 if native else torch.float)
    # On CUDA, auto is the DINOv2 config's mixed precision.
    assert features_autocast_dtype(cfg, torch.device("cuda")) == torch.half
    cuda_bf16 = build_vpr_config(CONFIG_FILE, ["compute_precision.teacher.backbone.mixed_precision.param_dtype=bf16"])
    assert features_autocast_dtype(cuda_bf16, torch.device("cuda")) == torch.bfloat16


@pytest.mark.parametrize(
    ("precision", "dtype"), [("fp32", torch.float), ("bf16", torch.bfloat16), ("fp16", torch.half)]
)
def test_a_forced_precision_holds_on_any_device(precision, dtype):
    cfg = build_vpr_config(CONFIG_FILE, [f"vpr.features.precision={precision}"])
    for device in ("cpu", "cuda"):
        assert features_autocast_dtype(cfg, torch.device(device)) == dtype


def test_an_unknown_precision_is_an_input_error():
    cfg = build_vpr_config(CONFIG_FILE, ["vpr.features.precision=fp8"])
    with pytest.raises(InputError, match="vpr.features.precision='fp8' is unknown; choose auto or one of"):
        features_autocast_dtype(cfg, torch.device("cpu"))


def test_precision_is_part_of_the_cache_key():
    cfg = build_vpr_config(CONFIG_FILE)
    transform = ImageTransform((56, 56))
    digests = {
        settings_digest(feature_settings(cfg, None, transform, dtype)) for dtype in (torch.float, torch.bfloat16)
    }
    assert len(digests) == 2


def test_bf16_descriptors_agree_with_fp32(tmp_path: Path):
    make_retrieval_dataset(tmp_path, num_places=8, queries_per_place=1, image_size=(56, 56))
    images = list_images(tmp_path / "database")
    models = {
        precision: load_place_model(
            config_file=CONFIG_FILE,
            opts=[*TINY_MODEL_OPTS, f"vpr.features.precision={precision}"],
            random_backbone=True,
            zero_shot="gem",
        )
        for precision in ("fp32", "bf16")
    }
    assert models["bf16"].autocast_dtype == torch.bfloat16
    fp32, bf16 = (models[precision].describe(images) for precision in ("fp32", "bf16"))
    assert not torch.equal(fp32, bf16), "bf16 autocast did not run"
    cosines = (fp32 * bf16).sum(dim=1)
    assert cosines.min() > 0.999, cosines
