"""A lean DINOv2 core: checkpoint-compatible backbones, configs, evaluation set-up and launcher."""

__version__ = "0.1.0"
