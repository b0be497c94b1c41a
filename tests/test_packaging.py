"""
The distribution of mqtwist: what its wheel holds, and that an installed
wheel gives a working C{twistd mqtwist} away from the checkout.

These tests build from a copy of the checkout, so that neither the build
nor a stale C{build/} folder touches the working tree.  Deselect them with
C{-m "not packaging"}.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

TOP = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.packaging

#: what a copy of the checkout leaves out: local state and build output
IGNORED = shutil.ignore_patterns(
    ".git", ".venv", ".state", "build", "dist", "*.egg-info", "__pycache__",
    ".hypothesis", ".mypy_cache", ".pytest_cache", "work",
)


def run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    """
    Run a command to completion; fail the test, with its output, if it fails.

    @return: its standard output.
    """
    result = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """
    A copy of the checkout with Twisted's plugin caches in it, as a
    developer's tree has after running C{twistd}: the build must leave them
    out.
    """
    copy = tmp_path_factory.mktemp("source") / "mqtwist"
    shutil.copytree(TOP, copy, ignore=IGNORED)
    for folder in ("twisted/plugins", "mqtwist/plugins"):
        (copy / folder / "dropin.cache").write_bytes(b"stale cache")
    return copy


@pytest.fixture(scope="module")
def wheel(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """
    The wheel of the checkout, built with the setuptools at hand (no
    download of build dependencies).
    """
    out = tmp_path_factory.mktemp("wheel")
    run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--no-index", "-q", "-w", str(out), str(source)],
        cwd=source,
    )
    (built,) = out.glob("mqtwist-*.whl")
    return built


def test_wheelContents(wheel: Path) -> None:
    """
    The wheel holds the package, its AMQP spec and the drop-in, and no
    plugin cache, tests or tooling.
    """
    names = zipfile.ZipFile(wheel).namelist()
    assert "twisted/plugins/mqtwist_plugin.py" in names
    assert "mqtwist/tap.py" in names
    assert "mqtwist/plugins/__init__.py" in names
    assert [name for name in names if name.startswith("mqtwist/amqp/") and name.endswith(".xml")]
    assert [name for name in names if name.endswith("dropin.cache")] == []
    assert [name for name in names if name.startswith(("tests/", "bench/", "examples/"))] == []
    # The drop-in folder must not be a package of its own: it would hide
    # Twisted's twisted.plugins.
    assert "twisted/__init__.py" not in names
    assert "twisted/plugins/__init__.py" not in names


def test_sdistHasNoPluginCache(source: Path, tmp_path: Path) -> None:
    run(
        [sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir",
         str(tmp_path), str(source)],
        cwd=source,
    )
    (sdist,) = tmp_path.glob("mqtwist-*.tar.gz")
    names = tarfile.open(sdist).getnames()
    assert any(name.endswith("twisted/plugins/mqtwist_plugin.py") for name in names)
    assert [name for name in names if name.endswith("dropin.cache")] == []
    # the reference that README.rst links to
    for document in ("docs/README.rst", "docs/messages.rst", "docs/plugins.rst"):
        assert any(name.endswith(document) for name in names), document


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """
    A fresh virtualenv with the wheel installed.  Its dependencies (Twisted,
    txamqp, ...) come from the environment running the tests, through a
    C{.pth} file that adds that environment's site-packages after the
    venv's own -- so that nothing is downloaded, and nothing of the
    checkout (an editable install's own C{.pth}) comes along.

    @return: the venv's python.
    """
    venv = tmp_path_factory.mktemp("venv") / "env"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=venv.parent)
    python = venv / "bin" / "python"
    purelib = Path(
        run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            cwd=venv.parent).strip()
    )
    ours = [sysconfig.get_path("purelib"), *site.getsitepackages()]
    (purelib / "dependencies-of-the-test-run.pth").write_text(
        "\n".join(dict.fromkeys(path for path in ours if os.path.isdir(path))) + "\n"
    )
    run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
         "--no-index", "-q", str(wheel)],
        cwd=venv.parent,
    )
    return python


def twistd(python: Path, *args: str, cwd: Path) -> str:
    """
    Run twistd of the venv of C{python}, isolated from the environment
    (no C{PYTHONPATH}, no user site) and from the checkout.
    """
    return run(
        [str(python), "-I", "-c", "from twisted.scripts.twistd import run; run()", *args],
        cwd=cwd,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(cwd)},
    )


def test_installedWheelRunsTwistd(installed: Path, tmp_path: Path) -> None:
    """
    Installed from the wheel, mqtwist is found by twistd and its options
    work, from a directory that has nothing to do with the checkout.
    """
    where = run(
        [str(installed), "-I", "-c",
         "import mqtwist.tap, twisted.plugins.mqtwist_plugin as p; "
         "print(mqtwist.tap.__file__); print(p.__file__)"],
        cwd=tmp_path,
    ).split()
    venv = installed.parent.parent
    assert all(Path(path).is_relative_to(venv) for path in where), where

    versions = run(
        [str(installed), "-I", "-c",
         "import mqtwist, importlib.metadata as m; print(mqtwist.__version__, m.version('mqtwist'))"],
        cwd=tmp_path,
    ).split()
    assert versions == ["0.1.0", "0.1.0"]

    listing = twistd(installed, "--help", cwd=tmp_path)
    assert "mqtwist          Outbound mail transfer agent" in listing

    usage = twistd(installed, "mqtwist", "--help", cwd=tmp_path)
    for option in ("--amqp=", "--config=", "--list-plugins", "--timeouts-connect="):
        assert option in usage

    plugins = twistd(installed, "mqtwist", "--list-plugins", cwd=tmp_path)
    assert plugins.startswith("No data plugins are installed.")
