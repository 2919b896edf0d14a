"""VPR task defaults, installed as the package ``dinov2_vpr.configs``."""
