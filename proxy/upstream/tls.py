"""The TLS contexts that verify https upstreams on lean connections (upstream.transport).

Built once per app in build_clients and shared by every connection. The default is the
context httpx itself builds by default (certifi's CAs, hostname check, CERT_REQUIRED), made by
httpx's own function so the two paths trust exactly the same certificates. A provider with a
private CA names its PEM file in `options.ca_file`; that context is used on both paths.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping

import httpx

from proxy.catalog import Provider

# httpx replaces its CA bundle with these when set (trust_env). Then https is left to httpx, so
# that the verifying is done by the code the operator configured.
CA_ENV = ("SSL_CERT_FILE", "SSL_CERT_DIR")
CA_FILE_OPTION = "ca_file"
# As httpcore without http2: the server must not pick h2, which lean connections cannot speak.
ALPN = ("http/1.1",)


def default_context(environ: Mapping[str, str] | None = None) -> ssl.SSLContext | None:
    """httpx's default verifying context, offering HTTP/1.1 only; None when the environment
    names its own CAs (https then goes to httpx, which reads them)."""
    environ = os.environ if environ is None else environ
    if any(environ.get(name) for name in CA_ENV):
        return None
    return _http1(httpx.create_ssl_context(trust_env=False))


def ca_context(ca_file: str) -> ssl.SSLContext:
    """A verifying context (hostname check, CERT_REQUIRED) that trusts only the CAs in a PEM
    file, offering HTTP/1.1 only."""
    return _http1(ssl.create_default_context(cafile=ca_file))


def provider_context(provider: Provider) -> ssl.SSLContext | None:
    """The context of a provider with `options.ca_file`, None for one without. Raises
    ValueError naming the provider if the file cannot be read as PEM certificates."""
    ca_file = provider.options.get(CA_FILE_OPTION)
    if ca_file is None:
        return None
    where = f"provider {provider.name}: options.{CA_FILE_OPTION}"
    if not isinstance(ca_file, str) or not ca_file:
        raise ValueError(f"{where} must be the path of a PEM file")
    try:
        return ca_context(ca_file)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise ValueError(f"{where}: cannot load {ca_file}: {exc}") from None


def _http1(context: ssl.SSLContext) -> ssl.SSLContext:
    context.set_alpn_protocols(list(ALPN))
    return context
