"""Export of a :class:`~dinov2_vpr.models.descriptor.PlaceDescriptor` (backbone, pooling, head) to TorchScript or ONNX.

The exported model maps ``(B, 3, H, W)`` images, normalised as the model's transform makes them, at
the model's image size, to ``(B, D)`` unit descriptors; the batch size may vary. For a square image
size the position embedding is resampled once, so the graph holds no interpolation; for another
size the traced graph resamples it with constant sizes. Every export is checked against the eager
model on a sample batch.
"""

import copy
import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from dinov2.layers.pos_embed import resample_patch_pos_embed
from dinov2_vpr.io import atomic_write
from dinov2_vpr.models.descriptor import PlaceDescriptor

logger = logging.getLogger("dinov2")

EXPORT_FORMATS = ("torchscript", "onnx")
ONNX_OPSET = 17
# ONNX files are protobufs, which hold at most 2 GiB; larger models need external data files.
ONNX_MAX_BYTES = 2**31
DEFAULT_TOLERANCE = 1e-4


class ExportMismatchError(RuntimeError):
    """The exported model's descriptors differ from the eager model's by more than the tolerance."""


def fixed_size_model(model: PlaceDescriptor) -> PlaceDescriptor:
    """A float32 CPU copy of ``model``; for a square image size its position embedding is resampled
    for that size (the backbone uses a stored embedding as it is only for a square grid).
    """
    height, width = model.transform.size
    backbone = model.backbone
    grid_h, grid_w = height // backbone.patch_size, width // backbone.patch_size
    exported = copy.deepcopy(model).to(device="cpu", dtype=torch.float).eval()
    native = exported.backbone.pos_embed.shape[1] - 1
    if grid_h == grid_w and native != grid_h * grid_w:
        resampled = resample_patch_pos_embed(
            exported.backbone.pos_embed.detach(),
            grid_h,
            grid_w,
            offset=exported.backbone.interpolate_offset,
            antialias=exported.backbone.interpolate_antialias,
        )
        exported.backbone.pos_embed = nn.Parameter(resampled, requires_grad=False)
    exported.autocast_dtype = torch.float
    return exported


def sample_images(model: PlaceDescriptor, batch_size: int = 2, seed: int = 0) -> Tensor:
    """A seeded batch of random normalised images at the model's image size."""
    height, width = model.transform.size
    return torch.randn(batch_size, 3, height, width, generator=torch.Generator().manual_seed(seed))


@contextmanager
def _quiet_export() -> Iterator[None]:
    """No gradients; silence the tracer's warnings and PyTorch's deprecation notices of TorchScript.

    The shapes the tracer turns into constants are the image size, fixed by design; TorchScript
    and the TorchScript-based ONNX exporter are deprecated upstream but are the formats asked for.
    """
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        yield


def export_torchscript(model: PlaceDescriptor, path: str | Path, example: Tensor) -> None:
    """Trace ``model`` (from :func:`fixed_size_model`) on ``example`` and save it (atomically) to ``path``."""
    with _quiet_export(), atomic_write(path, "wb") as file:
        torch.jit.save(torch.jit.trace(model, example, check_trace=False), file)


def export_onnx(model: PlaceDescriptor, path: str | Path, example: Tensor, opset: int = ONNX_OPSET) -> None:
    """Export ``model`` (from :func:`fixed_size_model`) to ONNX at ``path`` (atomically), with a dynamic batch axis.

    The input is named ``images`` and the output ``descriptors``.

    Raises:
        ValueError: the weights exceed the 2 GiB an ONNX file can hold (ViT-g); export TorchScript instead.
    """
    size = sum(tensor.numel() * tensor.element_size() for tensor in [*model.parameters(), *model.buffers()])
    if size >= ONNX_MAX_BYTES:
        raise ValueError(
            f"The model's weights take {size / 2**30:.1f} GiB, more than the 2 GiB an ONNX file holds; "
            "export --format torchscript instead"
        )
    with _quiet_export(), atomic_write(path, "wb") as file:
        torch.onnx.export(
            model,
            (example,),
            file,
            dynamo=False,
            opset_version=opset,
            input_names=["images"],
            output_names=["descriptors"],
            dynamic_axes={"images": {0: "batch"}, "descriptors": {0: "batch"}},
        )


def run_exported(path: str | Path, export_format: str, images: Tensor) -> np.ndarray:
    """Descriptors of ``images`` from an exported model file, as float32 numpy."""
    if export_format == "torchscript":
        with _quiet_export():
            return torch.jit.load(str(path), map_location="cpu")(images).numpy()
    if export_format == "onnx":
        import onnxruntime  # optional dependency (the "export" extra)

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(["descriptors"], {"images": images.numpy()})[0]
    raise ValueError(f"Export format {export_format!r} is unknown; choose one of {EXPORT_FORMATS}")


def export_model(
    model: PlaceDescriptor, path: str | Path, export_format: str, tolerance: float = DEFAULT_TOLERANCE
) -> dict:
    """Export ``model`` to ``path`` if the exported file gives the eager model's descriptors.

    The check compares with the eager model on the CPU, on a batch of another size than the
    traced one, so a batch size baked into the graph fails it too.

    Returns:
        ``{"path", "format", "input_shape", "output_dim", "max_abs_difference"}``.

    Raises:
        ExportMismatchError: the exported descriptors differ by more than ``tolerance``.
    """
    if export_format not in EXPORT_FORMATS:
        raise ValueError(f"Export format {export_format!r} is unknown; choose one of {EXPORT_FORMATS}")
    path = Path(path)
    fixed = fixed_size_model(model)
    example = sample_images(model, batch_size=2, seed=0)
    unchecked = path.with_name(f".{path.name}.unchecked")
    try:
        if export_format == "torchscript":
            export_torchscript(fixed, unchecked, example)
        else:
            export_onnx(fixed, unchecked, example)
        check = sample_images(model, batch_size=3, seed=1)
        reference = model if model.device.type == "cpu" else copy.deepcopy(model).cpu()  # the export's arithmetic
        with torch.no_grad():
            expected = reference.eval()(check).numpy()
        difference = float(np.abs(run_exported(unchecked, export_format, check) - expected).max())
        if not difference <= tolerance:
            raise ExportMismatchError(
                f"The {export_format} export of the model gives descriptors up to {difference:.2e} away from the "
                f"eager model's (tolerance {tolerance:.0e}); {path} was not written. A larger tolerance accepts it"
            )
        os.replace(unchecked, path)
    finally:
        unchecked.unlink(missing_ok=True)
    height, width = model.transform.size
    logger.info("Exported %s to %s; largest descriptor difference to eager %.2e", export_format, path, difference)
    return {
        "path": str(path),
        "format": export_format,
        "input_shape": ["batch", 3, height, width],
        "output_dim": model.output_dim,
        "max_abs_difference": difference,
    }
