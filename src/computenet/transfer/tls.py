"""TLS for data streams: the agent's own certificate, pinned by its SHA-256 fingerprint.

The fingerprint travels to clients through the node (in the pool's data endpoint), over
the authenticated API, so no certificate authority is needed and none can be misused.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from computenet.transfer.wire import TransferError

CERT, KEY = "data.crt", "data.key"


def _create(cert: Path, key: Path) -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "computenet data server")])
    now = datetime.datetime.now(datetime.UTC)
    built = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .sign(private, hashes.SHA256())
    )
    key.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(
            private.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    cert.write_bytes(built.public_bytes(serialization.Encoding.PEM))


def server_context(directory: Path) -> tuple[ssl.SSLContext, str]:
    """The server's context and its certificate's fingerprint; created once, then kept."""
    cert, key = directory / CERT, directory / KEY
    if not cert.exists() or not key.exists():
        _create(cert, key)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(cert, key)
    der = ssl.PEM_cert_to_DER_cert(cert.read_text())
    return ctx, hashlib.sha256(der).hexdigest()


def client_context() -> ssl.SSLContext:
    """Checks nothing by itself: ``pinned`` checks the fingerprint after the handshake."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def pinned(ssl_object: ssl.SSLObject | ssl.SSLSocket | None, fingerprint: str | None) -> None:
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if not der or fingerprint is None or hashlib.sha256(der).hexdigest() != fingerprint:
        raise TransferError("the data server's TLS certificate is not the one its pool registered")
