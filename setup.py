"""Installs the `dinov2` core and the `dinov2_vpr` task (with their YAML configs)."""

from setuptools import find_packages, setup

setup(
    name="dinov2-vpr",
    version="0.1.0",
    description="Visual place recognition and loop-closure verification on frozen DINOv2 features",
    python_requires=">=3.10",
    packages=find_packages(include=["dinov2", "dinov2.*", "dinov2_vpr", "dinov2_vpr.*"]) + ["dinov2_vpr.configs"],
    package_dir={"dinov2_vpr.configs": "configs"},
    package_data={"dinov2": ["configs/*.yaml", "configs/eval/*.yaml"], "dinov2_vpr.configs": ["*.yaml"]},
    install_requires=[
        "torch>=2.2",
        "numpy>=1.24",
        "pillow>=10",
        "omegaconf>=2.3,<2.5",
        "fvcore>=0.1.5.post20221221",
        "iopath>=0.1.9",
        "submitit>=1.5,<1.6",
        "scikit-learn>=1.4",
        "faiss-cpu>=1.8",
        "tensorboard>=2.15",
        "matplotlib>=3.8",
        "pytorch-metric-learning>=2.9,<3",
        "kornia>=0.9,<0.10",
    ],
    extras_require={
        "gpu": ["xformers"],
        "export": ["onnx>=1.16", "onnxruntime>=1.18"],
        "dev": ["pytest>=8", "pytest-timeout>=2.3", "onnx>=1.16", "onnxruntime>=1.18", "ruff>=0.6"],
    },
)
