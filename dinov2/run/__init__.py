"""Submission of DINOv2 and VPR commands to SLURM through submitit (``dinov2.run.submit``)."""
