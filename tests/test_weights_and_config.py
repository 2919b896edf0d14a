"""Strict weight loading with helpful errors; config merging; hub constructors; evaluation set-up."""

import pytest
import torch
from omegaconf import OmegaConf

from dinov2.eval.setup import get_args_parser, setup_and_build_model
from dinov2.hub import backbones
from dinov2.models.vision_transformer import DinoVisionTransformer
from dinov2.utils.config import build_config
from dinov2.utils.errors import InputError
from dinov2.utils.utils import convert_checkpoint, load_pretrained_weights


def _case(dinov2_reference_dir, name):
    return torch.load(dinov2_reference_dir / f"{name}.pt", weights_only=True)


def test_register_checkpoint_into_model_without_registers_says_so(dinov2_reference_dir):
    case = _case(dinov2_reference_dir, "vit_reg4")
    model = DinoVisionTransformer(**{**case["constructor"], "num_register_tokens": 0})
    with pytest.raises(ValueError) as error:
        load_pretrained_weights(model, str(dinov2_reference_dir / "vit_reg4_teacher_checkpoint.pth"), "teacher")
    message = str(error.value)
    assert "vit_reg4_teacher_checkpoint.pth" in message
    assert "unexpected keys: register_tokens" in message
    assert "4 register tokens" in message and "_reg4" in message


def test_wrong_width_names_the_architectures(dinov2_reference_dir, tmp_path):
    path = tmp_path / "vitb.pth"
    with torch.device("meta"):
        vit_b = backbones.dinov2_vitb14(pretrained=False)
    torch.save({key: torch.zeros(value.shape) for key, value in vit_b.state_dict().items()}, path)
    with torch.device("meta"):
        vit_l = backbones.dinov2_vitl14(pretrained=False)
    with pytest.raises(ValueError, match=r"the checkpoint is ViT-B/14 \(vitb14\), not ViT-L/14 \(vitl14\)"):
        load_pretrained_weights(vit_l, str(path))


def test_swiglu_mismatch_and_missing_file(dinov2_reference_dir, tmp_path):
    case = _case(dinov2_reference_dir, "vit_swiglu")
    torch.save(case["state_dict"], tmp_path / "swiglu.pth")
    model = DinoVisionTransformer(**{**case["constructor"], "ffn_layer": "mlp"})
    with pytest.raises(ValueError, match="student.ffn_layer=swiglufused"):
        load_pretrained_weights(model, str(tmp_path / "swiglu.pth"))
    with pytest.raises(FileNotFoundError, match="nothere.pth"):
        load_pretrained_weights(model, str(tmp_path / "nothere.pth"))


def test_checkpoint_key_that_is_absent_is_an_error(dinov2_reference_dir, tmp_path):
    case = _case(dinov2_reference_dir, "vit_mlp")
    torch.save({"model": case["state_dict"], "epoch": 3}, tmp_path / "run.pth")
    model = DinoVisionTransformer(**case["constructor"])
    with pytest.raises(InputError, match="no checkpoint key 'teacher'.*'epoch', 'model'"):
        load_pretrained_weights(model, str(tmp_path / "run.pth"), "teacher")
    load_pretrained_weights(model, str(tmp_path / "run.pth"), "model")
    assert torch.equal(model.state_dict()["pos_embed"], case["state_dict"]["pos_embed"])


def test_convert_checkpoint_strips_prefixes_and_chunks():
    converted = convert_checkpoint({"module.backbone.blocks.2.7.attn.qkv.weight": 1, "backbone.cls_token": 2})
    assert converted == {"blocks.7.attn.qkv.weight": 1, "cls_token": 2}


def test_hub_constructors_need_a_local_file(dinov2_reference_dir, tmp_path):
    with pytest.raises(ValueError, match=r"download dinov2_vitl14_reg4_pretrain\.pth .* pass weights=<path>"):
        with torch.device("meta"):
            backbones.dinov2_vitl14_reg()
    with torch.device("meta"):
        model = backbones.dinov2_vits14_reg(pretrained=False)
    assert model.num_register_tokens == 4 and model.interpolate_antialias and model.interpolate_offset == 0.0


def test_config_merges_default_file_and_opts(tmp_path):
    config_file = tmp_path / "model.yaml"
    config_file.write_text("student:\n  arch: vit_small\n  patch_size: 14\n")
    cfg = build_config(str(config_file), ["crops.global_crops_size=518", "train.seed=7"])
    assert (cfg.student.arch, cfg.student.patch_size, cfg.crops.global_crops_size, cfg.train.seed) == (
        "vit_small",
        14,
        518,
        7,
    )
    assert cfg.student.ffn_layer == "mlp"


def test_typo_in_opts_names_the_key():
    with pytest.raises(ValueError, match=r"Unknown config key 'student.archh' in --opts\. Did you mean student.arch"):
        build_config("dinov2/configs/eval/vits14_pretrain.yaml", ["student.archh=vit_base"])


def test_typo_in_config_file_names_the_key(tmp_path):
    config_file = tmp_path / "bad.yaml"
    config_file.write_text("crops:\n  global_crop_size: 518\n")
    with pytest.raises(ValueError, match=r"crops.global_crop_size.*bad.yaml"):
        build_config(str(config_file))


def test_setup_and_build_model_loads_a_training_checkpoint_on_cpu(tmp_path):
    """An eval config and a DINOv2 training checkpoint (teacher, backbone. prefix, 4 chunks) give the same model."""
    torch.manual_seed(0)
    reference = backbones.dinov2_vits14_reg(pretrained=False, block_chunks=4).eval()
    teacher = {f"backbone.{key}": value for key, value in reference.state_dict().items()}
    assert "backbone.blocks.3.11.mlp.fc1.weight" in teacher
    torch.save({"teacher": teacher, "iteration": 7}, tmp_path / "training_checkpoint.pth")
    args = get_args_parser().parse_args(
        [
            "--config-file", "dinov2/configs/eval/vits14_reg4_pretrain.yaml",
            "--pretrained-weights", str(tmp_path / "training_checkpoint.pth"),
            "--output-dir", str(tmp_path / "run"),
            "--opts", "train.seed=3",
        ]
    )  # fmt: skip
    model, dtype = setup_and_build_model(args)
    assert dtype == torch.float and not model.training
    assert all(not p.requires_grad for p in model.parameters())
    images = torch.randn(2, 3, 56, 84)
    with torch.no_grad():
        torch.testing.assert_close(model(images), reference(images), atol=1e-5, rtol=0)
    saved = OmegaConf.load(tmp_path / "run" / "config.yaml")
    assert saved.student.num_register_tokens == 4 and saved.train.seed == 3
    assert saved.train.output_dir == str(tmp_path / "run")
