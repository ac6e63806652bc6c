"""Which ``Host`` headers the console answers: the defence against DNS rebinding.

A hostile web page can make its own name resolve to 127.0.0.1 and then read this
console's pages and ``/api`` from the operator's browser as "same origin": the one
thing such a request cannot hide is the name it was made to, in the ``Host`` header.
So the console answers only to the names it is meant to have:

- bound to this machine only (``web.host`` a loopback address or ``localhost``, the
  default): ``localhost``, ``127.0.0.1``, ``[::1]`` and ``web.allowed_hosts``;
- opened to the network: those, the configured host, this machine's name and any IP
  address (a rebinding needs a name of the attacker's; an address is none), and
  ``web.allowed_hosts`` (a DNS name of this machine, a reverse proxy's name).

Anything else is refused with 421 (Misdirected Request) before any route runs.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.responses import PlainTextResponse

from focuswatch.config import WebConfig

__all__ = ["HostCheck", "allowed_hosts", "host_name"]

_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})
_WILDCARD = frozenset({"0.0.0.0", "::", ""})

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def host_name(header: str) -> str | None:
    """The name in a ``Host`` header (``[::1]:8423`` → ``::1``), lower case; None when
    it is not a host and optional port."""
    text = header.strip().lower()
    if text.startswith("["):
        name, sep, rest = text[1:].partition("]")
        if not sep or (rest and not (rest.startswith(":") and rest[1:].isdigit())):
            return None
        return name or None
    name, _, port = text.partition(":")
    if port and not port.isdigit():
        return None
    name = name.rstrip(".")
    return name or None


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _is_loopback(name: str) -> bool:
    return name in _LOOPBACK or (_is_address(name) and ipaddress.ip_address(name).is_loopback)


def allowed_hosts(wcfg: WebConfig) -> Callable[[str | None], bool]:
    """Whether a request's ``Host`` header is one this console answers to."""
    names = set(_LOOPBACK) | {h.lower().rstrip(".") for h in wcfg.allowed_hosts}
    local = _is_loopback(wcfg.host.strip("[]").lower())
    if not local:
        host = wcfg.host.strip("[]").lower()
        if host not in _WILDCARD:
            names.add(host)
        me = socket.gethostname().lower()
        names |= {me, me.partition(".")[0]} - {""}

    def allowed(header: str | None) -> bool:
        name = None if header is None else host_name(header)
        if name is None:
            return False
        return name in names or (not local and _is_address(name))

    return allowed


class HostCheck:
    """ASGI middleware: a request to a name the console does not answer to gets 421."""

    def __init__(self, app: ASGIApp, *, allowed: Callable[[str | None], bool]) -> None:
        self._app = app
        self._allowed = allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            header = next(
                (v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"host"), None
            )
            if not self._allowed(header):
                refused = PlainTextResponse(
                    "refused: this console does not answer to that host name (Host header). "
                    "Use http://127.0.0.1:PORT/ or add this machine's name to web.allowed_hosts.\n",
                    status_code=421,
                )
                await refused(scope, receive, send)
                return
        await self._app(scope, receive, send)
