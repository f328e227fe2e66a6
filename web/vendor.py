"""Install the web UI's browser libraries (web/package.json, pinned by package-lock.json)
with ``npm ci`` and copy their dist files into logstats/web/static/vendor/ (git-ignored):
run by ``make setup`` and by the wheel build (setup.py's build_py), never at run time."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

WEB = Path(__file__).resolve().parent
VENDOR = WEB.parent / "logstats" / "web" / "static" / "vendor"
FILES = {  # node_modules path -> name served under /ui/static/vendor/
    "uplot/dist/uPlot.iife.min.js": "uPlot.iife.min.js",
    "uplot/dist/uPlot.min.css": "uPlot.min.css",
    "uplot/LICENSE": "uPlot.LICENSE",
}


def main() -> int:
    if all((VENDOR / name).is_file() for name in FILES.values()) and "--force" not in sys.argv:
        return 0
    modules = WEB / "node_modules"
    if "--force" in sys.argv or not all((modules / src).is_file() for src in FILES):
        npm = shutil.which("npm")
        if npm is None:
            print("web/vendor.py: npm is needed to build the web UI", file=sys.stderr)
            return 1
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=WEB, check=True
        )
    VENDOR.mkdir(parents=True, exist_ok=True)
    for src, name in FILES.items():
        shutil.copyfile(modules / src, VENDOR / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
