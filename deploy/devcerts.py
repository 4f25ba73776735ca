"""Throw-away certificates for trying the server over HTTPS: a development certificate
authority, a server certificate for localhost and the loopback addresses, and a client
certificate, all signed by that authority, made with the openssl command line.

    python3 -m deploy.devcerts --out runs/tls

Made once: a set already in the folder is kept until its certificates are about to expire.
None of it is for production, where the certificate comes from the platform's own authority
(docs/deploy.md#tls). The server never makes certificates; this is only `make serve-tls`'s
helper, and the tests'.
"""

from __future__ import annotations

import argparse
import ipaddress
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

AUTHORITY_NAME = "fraud-scoring development CA"
SERVER_HOSTS = ("localhost", "127.0.0.1", "::1")
DAYS = 90
# A set that expires within a day is made anew rather than served.
RENEW_WITHIN_S = 86_400


class Pair(NamedTuple):
    cert: Path
    key: Path


class DevelopmentSet(NamedTuple):
    authority: Pair
    server: Pair
    client: Pair


def openssl(*args: str | Path) -> str:
    """Runs the openssl command line; its error output, if it fails, in the exception."""
    binary = shutil.which("openssl")
    if binary is None:
        raise RuntimeError("the openssl command line is needed (Debian's package openssl)")
    # Arguments are this module's own, never a caller's text run through a shell.
    result = subprocess.run(  # noqa: S603
        [binary, *map(str, args)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {result.stderr.strip()}")
    return result.stdout


def subject_names(hosts: Sequence[str]) -> str:
    """The subjectAltName value: an IP entry for an address, a DNS entry for a name."""
    entries = []
    for host in hosts:
        try:
            entries.append(f"IP:{ipaddress.ip_address(host)}")
        except ValueError:
            entries.append(f"DNS:{host}")
    return ", ".join(entries)


def config_text(common_name: str, extensions: dict[str, str]) -> str:
    """An openssl configuration of its own, so that no system default adds to the request."""
    lines = ["[req]", "prompt = no", "distinguished_name = dn", "[dn]", f"CN = {common_name}"]
    lines += ["[ext]", *(f"{name} = {value}" for name, value in extensions.items())]
    return "\n".join(lines) + "\n"


def make_authority(directory: Path, name: str = AUTHORITY_NAME, days: int = DAYS) -> Pair:
    """A self-signed authority that may sign certificates and nothing deeper."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)  # it holds private keys
    pair = Pair(directory / "ca.crt", directory / "ca.key")
    extensions = {
        "basicConstraints": "critical, CA:TRUE, pathlen:0",
        "keyUsage": "critical, keyCertSign, cRLSign",
        "subjectKeyIdentifier": "hash",
    }
    with tempfile.TemporaryDirectory() as scratch:
        config = Path(scratch) / "ca.cnf"
        config.write_text(config_text(name, extensions))
        openssl(
            "req", "-x509", "-new", "-config", config, "-extensions", "ext",
            "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-sha256",
            "-days", str(days), "-keyout", pair.key, "-out", pair.cert,
        )  # fmt: skip
    pair.key.chmod(0o600)
    return pair


def make_certificate(
    authority: Pair,
    pair: Pair,
    common_name: str,
    hosts: Sequence[str] = (),
    client: bool = False,
    days: int = DAYS,
) -> Pair:
    """A leaf certificate signed by `authority`: for a server (with `hosts` as its
    subject alternative names, which is what clients check) or, with `client`, for a
    client that the server asks for one."""
    extensions = {
        "basicConstraints": "critical, CA:FALSE",
        "keyUsage": "critical, digitalSignature",  # an EC key only signs the handshake
        "extendedKeyUsage": "clientAuth" if client else "serverAuth",
        "subjectKeyIdentifier": "hash",
        "authorityKeyIdentifier": "keyid:always",
    }
    if hosts:
        extensions["subjectAltName"] = subject_names(hosts)
    with tempfile.TemporaryDirectory() as scratch:
        config, request = Path(scratch) / "leaf.cnf", Path(scratch) / "leaf.csr"
        config.write_text(config_text(common_name, extensions))
        openssl(
            "req", "-new", "-config", config, "-newkey", "ec",
            "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", pair.key, "-out", request,
        )  # fmt: skip
        openssl(
            "x509", "-req", "-in", request, "-CA", authority.cert, "-CAkey", authority.key,
            "-set_serial", hex(secrets.randbits(63) | 1), "-sha256", "-days", str(days),
            "-extfile", config, "-extensions", "ext", "-out", pair.cert,
        )  # fmt: skip
    pair.key.chmod(0o600)
    return pair


def still_valid(cert: Path, seconds: int = RENEW_WITHIN_S) -> bool:
    """The certificate exists and does not expire within `seconds`."""
    if not cert.is_file():
        return False
    try:
        openssl("x509", "-in", cert, "-noout", "-checkend", str(seconds))
    except RuntimeError:  # -checkend exits 1 for a certificate about to expire
        return False
    return True


def ensure_development_set(directory: Path) -> DevelopmentSet:
    """The folder's set, made if it is missing, incomplete or about to expire."""
    found = DevelopmentSet(
        Pair(directory / "ca.crt", directory / "ca.key"),
        Pair(directory / "tls.crt", directory / "tls.key"),
        Pair(directory / "client.crt", directory / "client.key"),
    )
    paths = [path for pair in found for path in pair]
    if all(path.is_file() for path in paths) and all(still_valid(p.cert) for p in found):
        return found
    authority = make_authority(directory)
    return DevelopmentSet(
        authority,
        make_certificate(authority, found.server, "localhost", SERVER_HOSTS),
        make_certificate(authority, found.client, "fraud-scoring development client", client=True),
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--out", type=Path, default=Path("runs/tls"), help="the folder")
    args = parser.parse_args(argv)
    made = ensure_development_set(args.out)
    print(f"development authority: {made.authority.cert} (trust it: curl --cacert)")
    print(f"server certificate:    {made.server.cert}, key {made.server.key}")
    print(f"client certificate:    {made.client.cert}, key {made.client.key}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
