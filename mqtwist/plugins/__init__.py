"""
Where mqtwist finds its data plugins (L{mqtwist.dataplugin.interfaces.IDataPlugin}).

Discovery (L{mqtwist.dataplugin.discovery}) runs C{twisted.plugin.getPlugins(IDataPlugin,
mqtwist.plugins)} over the modules of this package.  Besides this folder,
the package spans every C{mqtwist/plugins/} folder found on C{sys.path} when
it is first imported (L{twisted.plugin.pluginPackagePaths}), so a third
party ships a plugin as its own distribution::

    mqtwist-myplugin/
        pyproject.toml
        setup.cfg              [options] packages = mqtwist.plugins
        mqtwist/plugins/myplugin.py

with B{no} C{__init__.py} in its C{mqtwist/} or C{mqtwist/plugins/}
folders: a folder that has one would hide this package.  The plugin module
makes, at module level, an instance of a class that declares
C{@implementer(IDataPlugin)}; C{examples/} in the mqtwist source tree holds
complete distributions to copy.

Twisted caches what it found in a C{dropin.cache} file next to the plugin
modules; it is rebuilt whenever a module is newer than the cache.
"""

from twisted.plugin import pluginPackagePaths

__path__.extend(pluginPackagePaths(__name__))
__all__: list[str] = []
