"""A throwaway certificate authority for the sandbox's HTTPS origins (the fake Hub's CDN, the fake
drive's data host) and its TLS PostgreSQL, made with the openssl CLI: a client trusts the origins
only when told to trust the CA (``ca_bundle`` in relayd's config, ``SSL_CERT_FILE``, aria2c's
``--ca-certificate``), as it would a company's TLS-inspecting proxy.

The keys are ECDSA P-256 (what CloudFront and most CDNs serve) and the certificate names
``127.0.0.1`` and ``localhost``; everything lives for two days in the directory given.
"""

from __future__ import annotations

import functools
import ssl
import subprocess
from pathlib import Path

OPENSSL = "/usr/bin/openssl"
_DAYS = "2"
_EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]


class ThrowawayCA:
    """A CA (``ca_cert``, PEM) and one server certificate it signed for 127.0.0.1 and localhost."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.ca_cert = directory / "ca.pem"
        self.server_cert = directory / "server.pem"
        self.server_key = directory / "server.key"

    @classmethod
    def create(cls, directory: Path) -> ThrowawayCA:
        """Make a new CA and server certificate in *directory* (created if missing)."""
        directory.mkdir(parents=True, exist_ok=True)
        ca = cls(directory)
        ca_key = directory / "ca.key"
        _openssl(
            "req", "-x509", *_EC, "-days", _DAYS, "-subj", "/CN=relayd sandbox throwaway CA",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout", str(ca_key), "-out", str(ca.ca_cert),
        )  # fmt: skip
        request = directory / "server.csr"
        _openssl(
            "req", "-new", *_EC, "-subj", "/CN=127.0.0.1",
            "-keyout", str(ca.server_key), "-out", str(request),
        )  # fmt: skip
        extensions = directory / "server.ext"
        extensions.write_text(
            "basicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature\n"
            "extendedKeyUsage=serverAuth\n"
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
            "authorityKeyIdentifier=keyid\n"
            "subjectKeyIdentifier=hash\n"
        )
        _openssl(
            "x509", "-req", "-in", str(request), "-CA", str(ca.ca_cert), "-CAkey", str(ca_key),
            "-CAcreateserial", "-days", _DAYS, "-extfile", str(extensions), "-out", str(ca.server_cert),
        )  # fmt: skip
        return ca

    def client_certificate(self, name: str) -> tuple[Path, Path]:
        """Sign a client certificate whose CN is *name* (PostgreSQL's ``cert`` authentication reads the
        role from it); return its certificate and its key (mode 0600), both PEM."""
        cert, key = self.directory / f"client-{name}.pem", self.directory / f"client-{name}.key"
        request = self.directory / f"client-{name}.csr"
        _openssl("req", "-new", *_EC, "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(request))
        extensions = self.directory / "client.ext"
        extensions.write_text(
            "basicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature\n"
            "extendedKeyUsage=clientAuth\n"
        )
        _openssl(
            "x509", "-req", "-in", str(request), "-CA", str(self.ca_cert),
            "-CAkey", str(self.directory / "ca.key"), "-CAcreateserial", "-days", _DAYS,
            "-extfile", str(extensions), "-out", str(cert),
        )  # fmt: skip
        key.chmod(0o600)
        return cert, key

    @functools.cached_property
    def server_context(self) -> ssl.SSLContext:
        """Return the context a server wraps its accepted sockets in."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.server_cert, self.server_key)
        return context


def _openssl(*args: str) -> None:
    subprocess.run([OPENSSL, *args], check=True, capture_output=True)
