"""The build's one step beyond pyproject.toml: the gRPC message classes are generated from
agent/inference/protos/*.proto (grpcio-tools, a build requirement) before the package's
modules are collected, so every wheel and install has them; they are not in git."""

from __future__ import annotations

import runpy
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

GENERATOR = Path(__file__).resolve().parent / "agent" / "inference" / "protos" / "generate.py"


class BuildPyWithProtos(build_py):
    """``build_py`` that runs agent/inference/protos/generate.py first."""

    def run(self) -> None:
        runpy.run_path(str(GENERATOR))["generate"]()
        super().run()


setup(cmdclass={"build_py": BuildPyWithProtos})
