"""
The documented import path of the helpers for testing a data plugin, which
live in L{mqtwist.dataplugin.testing}.
"""

from mqtwist.dataplugin.testing import *  # noqa: F401,F403
from mqtwist.dataplugin.testing import __all__  # noqa: F401
