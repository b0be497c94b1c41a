"""
The documented import path of the data plugin interfaces, which live in
L{mqtwist.dataplugin.interfaces}.
"""

from mqtwist.dataplugin.interfaces import *  # noqa: F401,F403
from mqtwist.dataplugin.interfaces import __all__  # noqa: F401
