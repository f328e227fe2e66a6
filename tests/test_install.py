"""Packaging and the install steps of README.md and docs/systemd.md, from a built wheel.

One build (``python -m build``: the sdist, then the wheel from the sdist) of a copy of this
tree is shared by the module.  A fresh venv from the system Python gets the wheel alone,
and the files it lays down with ``logstats example`` are checked with the tools an
operator uses: ``logstats check-config``, ``systemd-analyze verify``, ``systemd-sysusers``.
The man page is held equal to what argparse-manpage makes of the parser now.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import logstats
from tests import manpage
from tests.test_systemd import need_tool

ROOT = Path(__file__).resolve().parents[1]
SYSTEM_PYTHON = Path("/usr/bin/python3")

# the files `logstats example NAME` prints, where they live in the repository, and where
# the wheel carries them (one copy: the wheel's are packaged from the repository's)
SHIPPED = {
    "config": ("config/logstats.example.yaml", "logstats/examples/logstats.example.yaml"),
    "unit": ("systemd/logstats.service", "logstats/unitfiles/logstats.service"),
    "sysusers": ("systemd/logstats.conf", "logstats/unitfiles/logstats.conf"),
    "report-service": (
        "systemd/logstats-report.service",
        "logstats/unitfiles/logstats-report.service",
    ),
    "report-timer": ("systemd/logstats-report.timer", "logstats/unitfiles/logstats-report.timer"),
    "manpage": ("docs/logstats.1", "logstats/manual/logstats.1"),
}
SKIP = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "var", "*.egg-info", "__pycache__", "*.duckdb*",
    ".mypy_cache", ".ruff_cache", ".pytest_cache", ".hypothesis", "node_modules", "vendor",
)  # fmt: skip


@dataclass
class Dist:
    output: str  # what the build printed
    sdist: Path
    wheel: Path


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Dist:
    """The sdist and the wheel built from a copy of this tree (as `python -m build`)."""
    work = tmp_path_factory.mktemp("build")
    source = work / "logstats"
    shutil.copytree(ROOT, source, ignore=SKIP, symlinks=True)
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(work / "dist"), str(source)],
        capture_output=True,
        text=True,
        check=False,
    )
    output = proc.stdout + proc.stderr
    assert 0 == proc.returncode, output
    [sdist] = (work / "dist").glob("logstats-*.tar.gz")
    [wheel] = (work / "dist").glob("logstats-*.whl")
    return Dist(output, sdist, wheel)


def _env() -> dict[str, str]:
    """The environment of an operator's shell: nothing pointing into this checkout."""
    drop = ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
    return {k: v for k, v in os.environ.items() if k not in drop}


@pytest.fixture(scope="module")
def venv(dist: Dist, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh venv from the system Python (as the install steps make it) with the wheel."""
    python = SYSTEM_PYTHON if SYSTEM_PYTHON.exists() else Path(sys.executable)
    folder = tmp_path_factory.mktemp("opt") / "logstats"
    subprocess.run([str(python), "-m", "venv", str(folder)], check=True, env=_env())
    proc = subprocess.run(
        [str(folder / "bin" / "pip"), "install", "--quiet", str(dist.wheel)],
        capture_output=True,
        text=True,
        check=False,
        env=_env(),
    )
    assert 0 == proc.returncode, proc.stdout + proc.stderr
    yield folder


def installed(venv: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(venv / "bin" / "logstats"), *args],
        capture_output=True,
        text=True,
        check=False,
        env=_env(),
        cwd=cwd or venv,
    )


def test_the_build_gives_no_deprecation_warning(dist: Dist) -> None:
    """Building the sdist and the wheel warns of nothing deprecated (the SPDX license form
    of pyproject.toml, with LICENSE as its license file)."""
    assert "deprecat" not in dist.output.lower(), dist.output


def test_the_sdist_has_config_systemd_docs_and_license(dist: Dist) -> None:
    """The source distribution has config/, systemd/ and docs/ whole, and LICENSE."""
    with tarfile.open(dist.sdist) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    wanted = {"LICENSE", "README.md", "pyproject.toml", "MANIFEST.in"}
    for folder in ("config", "systemd", "docs"):
        wanted |= {str(p.relative_to(ROOT)) for p in (ROOT / folder).iterdir() if p.is_file()}
    assert set() == wanted - names
    assert "MIT" in (ROOT / "LICENSE").read_text().splitlines()[0]


def test_the_wheel_carries_the_shipped_files(dist: Dist) -> None:
    """The wheel holds the example config, the unit, the sysusers file, the man page and
    the license, byte for byte the repository's files."""
    with zipfile.ZipFile(dist.wheel) as whl:
        names = set(whl.namelist())
        for name, (repo_path, wheel_path) in SHIPPED.items():
            assert wheel_path in names, name
            assert (ROOT / repo_path).read_bytes() == whl.read(wheel_path), name
        [license_file] = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
        assert (ROOT / "LICENSE").read_bytes() == whl.read(license_file)


def test_the_wheel_carries_the_web_ui_and_its_npm_libraries(dist: Dist) -> None:
    """The web UI's pages are the repository's; uPlot is in the wheel, installed by the
    build from web/package-lock.json (``npm ci``), not shipped in the sdist."""
    with tarfile.open(dist.sdist) as tar:
        in_sdist = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    assert {"web/package.json", "web/package-lock.json", "web/vendor.py", "setup.py"} <= in_sdist
    assert not any("/vendor/" in n or "node_modules" in n for n in in_sdist)
    pinned = json.loads((ROOT / "web" / "package-lock.json").read_text())
    version = pinned["packages"]["node_modules/uplot"]["version"]
    with zipfile.ZipFile(dist.wheel) as whl:
        names = set(whl.namelist())
        for page in (ROOT / "logstats" / "web" / "static").glob("*.*"):
            wheel_path = f"logstats/web/static/{page.name}"
            assert page.read_bytes() == whl.read(wheel_path), page.name
        script = whl.read("logstats/web/static/vendor/uPlot.iife.min.js").decode()
        assert "logstats/web/static/vendor/uPlot.min.css" in names
    assert f"uPlot (v{version})" in script.splitlines()[0]  # the pinned release's dist file
    assert "var uPlot=" in script


def test_installed_logstats_answers_version(venv: Path) -> None:
    """`logstats --version` of the wheel installed in a fresh venv: exit 0, the version."""
    proc = installed(venv, "--version")
    assert (0, f"logstats {logstats.__version__}") == (proc.returncode, proc.stdout.strip())


def test_example_prints_the_packaged_files(venv: Path) -> None:
    """`logstats example NAME` from the wheel prints exactly the repository's file."""
    for name, (repo_path, _) in SHIPPED.items():
        proc = installed(venv, "example", name)
        assert (0, (ROOT / repo_path).read_text()) == (proc.returncode, proc.stdout), name


def test_the_laid_down_config_passes_check_config(venv: Path, tmp_path: Path) -> None:
    """The example config as the install steps lay it down passes `check-config`."""
    etc = tmp_path / "etc" / "logstats"
    etc.mkdir(parents=True)
    config = etc / "logstats.yaml"
    config.write_text(installed(venv, "example", "config").stdout)
    config.chmod(0o640)
    proc = installed(venv, "check-config", "--config", str(config), cwd=tmp_path)
    assert 0 == proc.returncode, proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_laid_down_unit_passes_systemd_analyze_verify(venv: Path, tmp_path: Path) -> None:
    """The unit as laid down passes `systemd-analyze verify` without a word, once its
    ExecStart= path exists (the install steps link the venv's logstats there)."""
    analyze = need_tool("systemd-analyze")
    text = installed(venv, "example", "unit").stdout
    assert "ExecStart=/usr/local/bin/logstats " in text
    unit = tmp_path / "logstats.service"
    unit.write_text(
        text.replace("ExecStart=/usr/local/bin/logstats ", f"ExecStart={venv}/bin/logstats ")
    )
    proc = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, check=False, cwd=tmp_path
    )
    assert (0, "", "") == (proc.returncode, proc.stdout, proc.stderr)


def test_the_laid_down_sysusers_file_makes_the_user(venv: Path, tmp_path: Path) -> None:
    """systemd-sysusers accepts the laid-down file and creates the logstats system user
    (in a scratch root, as `systemd-sysusers` would on the host)."""
    sysusers = need_tool("systemd-sysusers")
    conf = tmp_path / "logstats.conf"
    conf.write_text(installed(venv, "example", "sysusers").stdout)
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    proc = subprocess.run(
        [sysusers, f"--root={root}", str(conf)], capture_output=True, text=True, check=False
    )
    assert 0 == proc.returncode, proc.stderr
    passwd = (root / "etc" / "passwd").read_text().splitlines()
    [entry] = [line.split(":") for line in passwd if line.startswith("logstats:")]
    assert ("/var/lib/logstats", "/usr/sbin/nologin") == (entry[5], entry[6])


def test_the_man_page_is_the_parsers(tmp_path: Path) -> None:
    """docs/logstats.1 is what argparse-manpage makes of the parser now (regenerate it
    with `make man`), and `man -l` renders it without a warning."""
    assert manpage.render() == (ROOT / "docs" / "logstats.1").read_text(), "run `make man`"
    man = need_tool("man")
    proc = subprocess.run(
        [man, "--warnings", "-l", "-P", "cat", str(ROOT / "docs" / "logstats.1")],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "MANWIDTH": "80", "LC_ALL": "C.UTF-8"},
    )
    assert (0, "") == (proc.returncode, proc.stderr)
    text = proc.stdout
    for command in ("backfill", "query emailtrack", "serve", "check-config", "example"):
        assert f"logstats {command}" in text, command
