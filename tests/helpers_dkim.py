"""
Helpers of the DKIM tests: a test key, its PEM text, and the verdicts of
independent verifiers (Perl's Mail::DKIM, or mailauth under node) on a
signed message, with the public keys from a name server on loopback (the
C{nameServer} fixture, L{fixtures_dkim}).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from perlmodules import needsPerl
from twisted.internet.utils import getProcessOutputAndValue

HERE = Path(__file__).parent

needsMailDKIM = needsPerl("Mail::DKIM::Verifier", "Net::DNS::Resolver", package="libmail-dkim-perl")

# mailauth (npm) verifies Ed25519 too; it is looked for in NODE_PATH, else
# in .state/node (npm install --prefix .state/node mailauth)
NODE_PATH = os.environ.get("NODE_PATH") or str(HERE.parent / ".state" / "node" / "node_modules")

needsMailauth = pytest.mark.skipif(
    shutil.which("node") is None
    or subprocess.run(
        ["node", "-e", "require('mailauth/lib/dkim/verify')"],
        capture_output=True,
        env={**os.environ, "NODE_PATH": NODE_PATH},
    ).returncode
    != 0,
    reason="needs node and mailauth: npm install --prefix .state/node mailauth",
)


def pem(key: Any) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")


def rsaKey() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


RSA_KEY = rsaKey()


async def verify(port: int, message: bytes, verifier: str = "perl") -> list[list[str]]:
    """
    The verdicts of Mail::DKIM (C{verifier="perl"}: one C{[result, domain,
    selector, algorithm, detail]} per signature, then C{["overall",
    result]}) or of mailauth (C{"node"}: C{[result, domain, selector,
    algorithm]} per signature, then C{["overall", passed]}) on C{message}.
    """
    script = HERE / ("dkimverify.pl" if verifier == "perl" else "dkimverify.mjs")
    with tempfile.NamedTemporaryFile(suffix=".eml") as f:
        f.write(message)
        f.flush()
        out, err, code = await getProcessOutputAndValue(
            verifier, [str(script), str(port), f.name], env={**os.environ, "NODE_PATH": NODE_PATH}
        )
    assert code == 0, err
    return [line.split(" ") for line in out.decode().splitlines()]


async def verifyARC(port: int, message: bytes, verifier: str = "node") -> list[list[str]]:
    """
    The verdict of mailauth (C{verifier="node"}) on the ARC chain of
    C{message}: C{["arc", result, instance]}, then C{["comment", ...]} when
    there is one, C{["aar", authserv-id, arc result]} from the last
    ARC-Authentication-Results and C{["ams", result, domain, selector]} for
    the last ARC-Message-Signature (see tests/arcverify.mjs); or of
    Mail::DKIM's ARC::Verifier (C{"perl"}): C{["arc", result]} then
    C{["detail", text]} (tests/arcverify.pl).
    """
    script = HERE / ("arcverify.pl" if verifier == "perl" else "arcverify.mjs")
    with tempfile.NamedTemporaryFile(suffix=".eml") as f:
        f.write(message)
        f.flush()
        out, err, code = await getProcessOutputAndValue(
            verifier,
            [str(script), str(port), f.name],
            env={**os.environ, "NODE_PATH": NODE_PATH},
        )
    assert code == 0, err
    return [line.split(" ") for line in out.decode().splitlines()]
