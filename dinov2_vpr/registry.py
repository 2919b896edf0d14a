"""The one place where heads, aggregators and losses are registered by name (fvcore registries)."""

from fvcore.common.registry import Registry

from dinov2.utils.errors import InputError

HEADS = Registry("HEADS")
HEADS.__doc__ = "Heads turning backbone features into descriptors: ``HEADS.get(name)(input_dim, **cfg)``."

AGGREGATORS = Registry("AGGREGATORS")
AGGREGATORS.__doc__ = (
    "Aggregators turning a backbone's tokens into descriptors: ``AGGREGATORS.get(name)(embed_dim, **cfg)``."
)

LOSSES = Registry("LOSSES")
LOSSES.__doc__ = "Pair losses on cosine similarities: ``LOSSES.get(name)(**cfg)(similarity, labels)``."


def lookup(registry: Registry, name: str, key: str):
    """``registry.get(name)`` with an error that names the config key and the registered names."""
    if name not in registry:
        names = ", ".join(sorted(name for name, _ in registry))
        raise InputError(f"{key}={name!r} is not registered; choose one of: {names}")
    return registry.get(name)
