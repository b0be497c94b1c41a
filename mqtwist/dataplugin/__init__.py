"""
The data plugin contract: L{interfaces} declares what a plugin implements
and what it is given (importable as C{mqtwist.interfaces}, and the main
names from C{mqtwist}); L{chain} runs the plugins of one attempt in order;
L{discovery} finds them with Twisted's plugin system in C{mqtwist.plugins};
L{testing} runs a plugin in a test (importable as C{mqtwist.testing}).
The protocol is described in C{docs/plugins.rst}.
"""
