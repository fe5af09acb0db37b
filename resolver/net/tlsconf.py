"""The TLS side of the encrypted listeners: contexts with ALPN, the client id a TLS server name carries, and the
certificate re-read when its files change (rotation without a restart).

One certificate pair serves both listeners; each gets its own context because ALPN differs (``dot`` for DNS over
TLS, ``h2`` then ``http/1.1`` for DNS over HTTPS). Sessions resume the way the ssl module sets up a server context
by default: TLS 1.3 tickets (two per handshake) and the TLS 1.2 session cache. A rotation builds new contexts, so
sessions from before it make a full handshake once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Final

from resolver.config.model import TlsConfig
from resolver.errors import ConfigError
from resolver.net.dohmsg import is_client_id

if TYPE_CHECKING:
    from sys import UnraisableHookArgs

log = logging.getLogger("resolver.tls")

DOT_ALPN: Final = ("dot",)
DOH_ALPN: Final = ("h2", "http/1.1")
WATCH_SECONDS: Final = 2.0


class PhoneSSLObject(ssl.SSLObject):
    """An SSLObject that remembers the server name the client asked for (set by the SNI callback)."""

    sni: str | None = None


def _remember_sni(sslobj: ssl.SSLSocket | ssl.SSLObject, name: str | None, context: ssl.SSLContext) -> None:
    if isinstance(sslobj, PhoneSSLObject):
        sslobj.sni = name
    # None: carry on with this context (an unknown name still gets our certificate, and no client id)


def _unraisable(hook: Callable[[UnraisableHookArgs], object]) -> Callable[[UnraisableHookArgs], object]:
    """``sys.unraisablehook`` without the report of a TLS server name that is not ASCII.

    CPython's ssl decodes the name as ASCII before it calls any sni_callback; one it cannot decode fails the
    handshake with an alert and goes to the unraisable hook, whose default prints a traceback on stderr. Any
    client can send such a name on every handshake: the connection ends cleanly, and there is nothing for an
    operator to read, least of all a line outside the JSON log per handshake. Anything else goes to ``hook``."""
    def quiet(args: UnraisableHookArgs) -> object:
        if isinstance(args.exc_value, UnicodeDecodeError) and args.exc_value.encoding == "ascii" \
                and isinstance(args.object, bytes):
            return None
        return hook(args)

    quiet.quiet_sni = True  # type: ignore[attr-defined]
    return quiet


def make_context(cert: Path, key: Path, alpn: tuple[str, ...]) -> ssl.SSLContext:
    """A server context for ``cert``/``key``; ``ConfigError`` naming the file when the pair cannot be used."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2  # RFC 7858, RFC 8484: nothing older
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as err:
        raise ConfigError(f"{cert}", f"cannot use this certificate with {key}: {err.reason or err}") from None
    except OSError as err:
        raise ConfigError(f"{err.filename or cert}", err.strerror or str(err)) from None
    context.set_alpn_protocols(list(alpn))
    context.sslobject_class = PhoneSSLObject
    context.sni_callback = _remember_sni
    if not getattr(sys.unraisablehook, "quiet_sni", False):
        sys.unraisablehook = _unraisable(sys.unraisablehook)
    return context


def client_id_of(sni: str | None, server_name: str) -> str | None:
    """``<id>.<server_name>`` -> ``<id>`` (one label); any other name, or none, carries no client id."""
    if not sni or not server_name:
        return None
    sni = sni.lower().rstrip(".")
    head, dot, tail = sni.partition(".")
    if dot and tail == server_name and is_client_id(head):  # the rule an id in a DoH path follows
        return head
    return None


def check_certificate(config: TlsConfig) -> None:
    """Refuse, as one ``ConfigError``, a certificate pair the listeners could not serve (``serve``, ``check``)."""
    if config.cert is not None and config.key is not None:
        make_context(config.cert, config.key, DOT_ALPN)


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


class TlsContexts:
    """The contexts new connections use; ``reload_if_changed`` swaps them in when the files change.

    A connection takes the context current when it is accepted: a rotation never touches one already open.
    """

    def __init__(self, config: TlsConfig) -> None:
        if config.cert is None or config.key is None:
            raise ConfigError("tls", "cert and key are needed")
        self.cert: Path = config.cert
        self.key: Path = config.key
        self.server_name = config.server_name
        self._stamps = self._files()
        self.dot, self.doh = self._build()
        self.reloads = 0
        self.failures = 0

    def _files(self) -> tuple[tuple[int, int, int] | None, ...]:
        return _stamp(self.cert), _stamp(self.key)

    def _build(self) -> tuple[ssl.SSLContext, ssl.SSLContext]:
        return make_context(self.cert, self.key, DOT_ALPN), make_context(self.cert, self.key, DOH_ALPN)

    def reload_if_changed(self) -> bool:
        """Re-read the pair when either file changed since the last look; True when new contexts serve.

        A pair that does not load (a key written after its certificate, say) keeps the old contexts serving; the
        next change is tried again, and the failure is logged once per change.
        """
        stamps = self._files()
        if stamps == self._stamps:
            return False
        self._stamps = stamps
        try:
            self.dot, self.doh = self._build()
        except ConfigError as err:
            self.failures += 1
            log.error("tls certificate not reloaded, the old one keeps serving: %s", err)
            return False
        self.reloads += 1
        log.info("tls certificate reloaded from %s", self.cert)
        return True

    async def watch(self, interval: float = WATCH_SECONDS) -> None:
        while True:
            await asyncio.sleep(interval)
            self.reload_if_changed()
