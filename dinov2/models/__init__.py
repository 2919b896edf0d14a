"""Model builders driven by the DINOv2 config."""

from omegaconf import DictConfig

from .vision_transformer import ARCHITECTURES, DinoVisionTransformer


def build_model(student_cfg: DictConfig, only_teacher: bool = False, img_size: int = 224):
    """Build the backbone described by ``student_cfg`` (the ``student.*`` config section).

    Returns ``(teacher, embed_dim)`` with ``only_teacher``, else ``(student, teacher, embed_dim)``;
    the student differs from the teacher by its stochastic depth.
    """
    arch = student_cfg.arch.removesuffix("_memeff")
    if arch not in ARCHITECTURES:
        raise ValueError(f"Unknown student.arch {student_cfg.arch!r}; choose one of {sorted(ARCHITECTURES)}.")
    vit_kwargs = dict(
        img_size=img_size,
        patch_size=student_cfg.patch_size,
        init_values=student_cfg.layerscale,
        ffn_layer=student_cfg.ffn_layer,
        block_chunks=student_cfg.block_chunks,
        qkv_bias=student_cfg.qkv_bias,
        proj_bias=student_cfg.proj_bias,
        ffn_bias=student_cfg.ffn_bias,
        num_register_tokens=student_cfg.num_register_tokens,
        interpolate_offset=student_cfg.interpolate_offset,
        interpolate_antialias=student_cfg.interpolate_antialias,
    )
    teacher = ARCHITECTURES[arch](**vit_kwargs)
    if only_teacher:
        return teacher, teacher.embed_dim
    student = ARCHITECTURES[arch](
        **vit_kwargs, drop_path_rate=student_cfg.drop_path_rate, drop_path_uniform=student_cfg.drop_path_uniform
    )
    return student, teacher, student.embed_dim


def build_model_from_cfg(cfg: DictConfig, only_teacher: bool = False):
    """Build the backbone of a full DINOv2 config, its position grid sized by ``crops.global_crops_size``.

    Build under ``torch.device("meta")`` to get the structure without allocating weights.
    """
    return build_model(cfg.student, only_teacher=only_teacher, img_size=cfg.crops.global_crops_size)


__all__ = ["ARCHITECTURES", "DinoVisionTransformer", "build_model", "build_model_from_cfg"]
