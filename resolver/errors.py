"""One error hierarchy; each boundary raises its own subclass so callers can map errors to outcomes in one place."""

from __future__ import annotations


class ResolverError(Exception):
    """Base of every error this package raises on purpose."""


class WireFormatError(ResolverError):
    """A DNS message could not be parsed; the query gets FORMERR (or is dropped if no header can be read)."""


class ConfigError(ResolverError):
    """A configuration or list file is invalid.

    ``where`` names the file and, when known, the line or the key path (``upstreams[1].address``), so an
    operator can go straight to the mistake.
    """

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"{where}: {reason}")
        self.where = where
        self.reason = reason


class ListenError(ResolverError):
    """A listen address cannot be bound (in use by another process, not an address of this host, no permission)."""


class UpstreamError(ResolverError):
    """No upstream gave a usable answer; the client gets SERVFAIL."""


class UpstreamTimeout(UpstreamError):
    """An upstream did not answer within its timeout."""


def one_line(text: str) -> str:
    """An error as one line that cannot drive the terminal: a newline or an escape sequence in a user's key or value
    is shown escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
