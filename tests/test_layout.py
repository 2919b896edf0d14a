"""The package layout: inference (every command but train, the Python API, export) never imports training code."""

import subprocess
import sys

from .conftest import REPO_ROOT

INFERENCE_MODULES = [
    "dinov2_vpr.run.eval",
    "dinov2_vpr.run.extract",
    "dinov2_vpr.run.retrieval",
    "dinov2_vpr.run.loops",
    "dinov2_vpr.run.export",
    "dinov2_vpr.models",
    "dinov2_vpr.loops",
]


def test_inference_does_not_import_training_code():
    code = (
        "import importlib, sys\n"
        f"for name in {INFERENCE_MODULES!r}: importlib.import_module(name)\n"
        "print(sorted(m for m in sys.modules if m.startswith('dinov2_vpr.training')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", f"inference imports training modules: {result.stdout}"
    # The check can fail: the train command does import them.
    code = code.replace(repr(INFERENCE_MODULES), repr(["dinov2_vpr.run.train"]))
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert "dinov2_vpr.training.trainer" in result.stdout
