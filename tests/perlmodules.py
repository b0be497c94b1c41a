"""
Skip markers for tests that use Perl modules from Debian as independent
checkers.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest


def needsPerl(*modules: str, package: str) -> pytest.MarkDecorator:
    """
    A marker that skips a test, naming the Debian C{package} to install,
    when C{perl} or one of C{modules} is missing.
    """
    missing = shutil.which("perl") is None or subprocess.run(
        ["perl", *(f"-M{module}" for module in modules), "-e1"], capture_output=True
    ).returncode != 0
    return pytest.mark.skipif(
        missing, reason=f"needs Perl's {modules[0]}: apt-get install {package}"
    )
