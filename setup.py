"""The wheel carries the web UI's browser libraries: build_py first runs web/vendor.py
(``npm ci`` from web/package-lock.json, the dist files copied into the package)."""

import runpy
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPy(build_py):
    def run(self) -> None:
        vendor = Path(__file__).resolve().parent / "web" / "vendor.py"
        if runpy.run_path(str(vendor))["main"]() != 0:
            raise SystemExit("web/vendor.py failed")
        super().run()


setup(cmdclass={"build_py": BuildPy})
