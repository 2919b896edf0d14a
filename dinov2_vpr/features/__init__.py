"""Backbone features: pooling of the tokens, the on-disk cache and (sharded) extraction."""
