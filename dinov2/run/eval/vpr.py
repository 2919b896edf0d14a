"""Submit a VPR evaluation to SLURM: ``python -m dinov2.run.eval.vpr [launcher options] <eval options>``.

The job runs ``dinov2.eval.vpr`` (the options of ``dinov2_vpr.run.eval``) in every task; see
``dinov2.run.submit`` for the launcher options (``--ngpus``, ``--nodes``, ``--partition``, ...).
"""

from dinov2.eval.vpr import get_args_parser, main
from dinov2.run.submit import submit_job

if __name__ == "__main__":
    submit_job(get_args_parser().parse_args(), main, name="dinov2:vpr")
