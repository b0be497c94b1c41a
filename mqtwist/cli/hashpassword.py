"""
C{mqtwist hash-password}: the argon2id hash of a password, for the users
file of the SMTP submission server (C{--submission-users}).  The password
is read from the terminal (twice, not echoed) or from the first line of
standard input; it is never an argument, where C{ps} and the shell's
history would show it.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any

from twisted.internet.threads import deferToThread

from mqtwist.cli.common import CommandError, Settings

NAME = "hash-password"
HELP = "make the password hash of a user of the SMTP submission server"


def addArguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Print the argon2id hash of a password for the users file of --submission-users. The "
        "password is asked for on the terminal (twice), or read from the first line of standard "
        "input (echo ... | mqtwist hash-password)."
    )
    parser.add_argument(
        "--user",
        metavar="NAME",
        help="print a [users.NAME] table for the users file instead of the bare hash",
    )


def readPassword() -> str:
    """
    The password: from the terminal, asked twice, or the first line of
    standard input.

    @raise CommandError: when it is empty, or the two entries differ.
    """
    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            raise CommandError("the two passwords differ; nothing was hashed")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise CommandError("the password is empty; give one")
    return password


def tomlString(text: str) -> str:
    """
    C{text} as a TOML basic string: quotes, backslashes and control
    characters escaped, every other character as it is (JSON's escapes
    would write a character beyond the BMP as two surrogates, which TOML
    refuses).
    """
    escaped = "".join(
        f"\\{char}" if char in '"\\' else f"\\u{ord(char):04X}" if char < " " or char == "\x7f" else char
        for char in text
    )
    return f'"{escaped}"'


async def run(reactor: Any, arguments: argparse.Namespace, settings: Settings) -> int:
    """
    @return: (a coroutine returning) the exit status: 0.
    @raise CommandError: see L{readPassword}.
    """
    from mqtwist.submission.access import hashPassword

    password = readPassword()
    # argon2 takes its time on purpose: in a thread, as the server checks it
    hashed: str = await deferToThread(hashPassword, password)
    if arguments.user:
        sys.stdout.write(f"[users.{tomlString(arguments.user)}]\npassword = {tomlString(hashed)}\n")
    else:
        sys.stdout.write(hashed + "\n")
    return 0
