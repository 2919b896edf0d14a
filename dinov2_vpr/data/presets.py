"""The preprocessing of each method's official evaluation, as the config values it sets.

``--method salad|boq`` puts these before the user's ``--opts``, so an explicit option still wins.
"""

METHOD_PRESETS = {
    "salad": {"vpr.data.image_size": [322, 322], "vpr.data.resize": "pil_bilinear"},
    "boq": {"vpr.data.image_size": [322, 322], "vpr.data.resize": "tensor_bicubic_antialias"},
}


def preset_options(method: str) -> list[str]:
    """``key=value`` options of ``method``'s preprocessing (ImageNet mean and std, as every model here)."""
    return [f"{key}={value}".replace(" ", "") for key, value in METHOD_PRESETS[method].items()]
