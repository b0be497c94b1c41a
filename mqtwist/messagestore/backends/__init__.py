"""
Where mqtwist finds its message store backends
(L{mqtwist.messagestore.interfaces.IMessageStoreBackend}).

Like L{mqtwist.plugins} for data plugins, this package spans every
C{mqtwist/messagestore/backends/} folder found on C{sys.path}
(L{twisted.plugin.pluginPackagePaths}), so a distribution adds a backend
with one module there, and B{no} C{__init__.py} in its C{mqtwist/},
C{mqtwist/messagestore/} or C{mqtwist/messagestore/backends/} folders.
C{builtin.py} holds the Redis backend that mqtwist ships.
"""

from twisted.plugin import pluginPackagePaths

__path__.extend(pluginPackagePaths(__name__))
__all__: list[str] = []
