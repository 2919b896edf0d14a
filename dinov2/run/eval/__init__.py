"""SLURM entry points of the evaluations: ``python -m dinov2.run.eval.<task>``."""
