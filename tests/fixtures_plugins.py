"""
Data plugins installed as other distributions install them, for the tests
of plugin discovery (L{mqtwist.dataplugin.discovery}).

Fixtures:

  - C{installPlugin}: a function C{installPlugin(module, source,
    site="site")} that writes a plugin module into
    C{SITE/mqtwist/plugins/MODULE.py} under the test's temporary directory
    and puts C{SITE} on C{sys.path}; returns the module's path.  Everything
    is as before after the test.
"""

from __future__ import annotations

import importlib
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import mqtwist.plugins


@pytest.fixture
def installPlugin(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """
    Install plugin modules as separate distributions would: each into
    C{SITE/mqtwist/plugins/MODULE.py} (no C{__init__.py} anywhere), with
    C{SITE} on C{sys.path} before L{mqtwist.plugins} is (re)imported.
    Afterwards C{sys.path}, the imported plugin modules and the package path
    are as before; the C{dropin.cache} files go with C{tmp_path}.
    """
    sites: list[str] = []

    def install(module: str, source: str, site: str = "site") -> Path:
        folder = tmp_path / site / "mqtwist" / "plugins"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{module}.py"
        path.write_text(textwrap.dedent(source))
        root = str(tmp_path / site)
        if root not in sys.path:
            sys.path.append(root)
            sites.append(root)
        importlib.invalidate_caches()
        importlib.reload(mqtwist.plugins)
        return path

    try:
        yield install
    finally:
        for root in sites:
            sys.path.remove(root)
        for name in [n for n in sys.modules if n.startswith("mqtwist.plugins.")]:
            module = sys.modules[name]
            if getattr(module, "__file__", "").startswith(str(tmp_path)):
                del sys.modules[name]
        importlib.reload(mqtwist.plugins)
        assert not any(str(tmp_path) in p for p in mqtwist.plugins.__path__)
