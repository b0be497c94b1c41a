"""
C{python -m mqtwist.cli}: the C{mqtwist} command without its script.
"""

from mqtwist.cli.main import main

main()
