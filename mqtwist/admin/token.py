"""
The admin API's bearer token as a file holds it: read by the service
(C{--admin-token-file}) and by the C{mqtwist} command, which must not pay
for importing the service to do so.
"""

from __future__ import annotations


def readTokenFile(path: str) -> str:
    """
    The admin token: the first line of the file at C{path}, without its
    surrounding white space.

    @raise ValueError: naming the file, when it cannot be read or its first
        line is empty.
    """
    try:
        with open(path, encoding="utf-8") as file:
            token = file.readline().strip()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read the admin token from {path}: {e}") from None
    if not token:
        raise ValueError(f"the admin token file {path} has an empty first line: put the token there")
    return token
