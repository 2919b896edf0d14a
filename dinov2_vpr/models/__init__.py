"""Place models: a DINOv2 backbone, a registered aggregator and an optional head; the released SALAD and BoQ."""

from .build import build_head, build_place_model
from .descriptor import PlaceDescriptor, load_place_model
from .place_model import PlaceModel
from .released import load_released_model

__all__ = [
    "PlaceDescriptor",
    "PlaceModel",
    "build_head",
    "build_place_model",
    "load_place_model",
    "load_released_model",
]
