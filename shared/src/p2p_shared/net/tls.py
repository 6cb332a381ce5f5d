"""TLS for the chunk channel. Trust is membership: any certificate signed by the swarm CA is
accepted, and host names are not checked (seeders are found by address, often changing ones)."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import P2PError

if TYPE_CHECKING:
    from ..settings import TlsSettings


def _load(context: ssl.SSLContext, cert: Path | None, key: Path | None, ca: Path | None) -> ssl.SSLContext:
    try:
        if cert is not None:
            context.load_cert_chain(cert, key)
        if ca is not None:
            context.load_verify_locations(ca)
    except (OSError, ssl.SSLError) as exc:
        raise P2PError(f"cannot load TLS files: {exc}") from None
    return context


def server_context(cert: Path, key: Path, ca: Path | None) -> ssl.SSLContext:
    """A seeder's context; with a CA, clients must present a certificate it signed (mutual TLS)."""
    context = _load(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), cert, key, ca)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(ca: Path, cert: Path | None, key: Path | None) -> ssl.SSLContext:
    """A leecher's context: seeders must present a certificate signed by the CA."""
    context = _load(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), cert, key, ca)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def serving_context(settings: TlsSettings) -> ssl.SSLContext | None:
    """The server context the settings ask for (None: plain TCP); a certificate without its key,
    or a key without its certificate, is one clear error."""
    if not (settings.tls_cert or settings.tls_key):
        return None
    if not (settings.tls_cert and settings.tls_key):
        raise P2PError("TLS needs both --tls-cert and --tls-key")
    return server_context(settings.tls_cert, settings.tls_key, settings.tls_ca)


def fetching_context(settings: TlsSettings) -> ssl.SSLContext | None:
    """The client context for fetching from peers: TLS once a CA is given."""
    return client_context(settings.tls_ca, settings.tls_cert, settings.tls_key) if settings.tls_ca else None
