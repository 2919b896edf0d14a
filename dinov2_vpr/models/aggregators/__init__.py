"""Aggregators: a backbone's tokens to place descriptors, registered in :data:`dinov2_vpr.registry.AGGREGATORS`."""

from .base import Aggregation, Aggregator, BackboneTokens
from .boq import BoQ
from .cls import CLS
from .gem import GeM
from .pooled import Pooled
from .salad import SALAD

__all__ = ["CLS", "SALAD", "Aggregation", "Aggregator", "BackboneTokens", "BoQ", "GeM", "Pooled"]
