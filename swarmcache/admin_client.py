"""The operator commands' side of the admin API: plain HTTP + JSON, standard library only.

Why standard library: these commands run once and exit; starting an event loop and an
aiohttp session for one request would only make them slower to start.
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

__all__ = ["AdminClient", "AdminError", "DaemonUnreachable"]


class AdminError(RuntimeError):
    """The daemon answered with an error; ``status`` is its HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class DaemonUnreachable(ConnectionError):
    """Nothing answers at the admin address (the daemon is not running, or elsewhere)."""


class AdminClient:
    def __init__(self, base_url: str, token: str = "", timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        content_type: str = "application/octet-stream",
    ) -> Any:
        req = urllib.request.Request(self.base_url + path, data=body, method=method)
        if body is not None:
            req.add_header("Content-Type", content_type)
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            text = exc.read().decode("utf-8", "replace").strip()
            raise AdminError(exc.code, text or exc.reason) from None
        except (urllib.error.URLError, OSError) as exc:
            where = urllib.parse.urlsplit(self.base_url).netloc or self.base_url
            raise DaemonUnreachable(
                f"swarmcache daemon not reachable at {where}: "
                f"{_why(getattr(exc, 'reason', exc))} "
                "(is `swarmcache run` running? the address is --admin or $SWARMCACHE_ADMIN)"
            ) from None
        try:
            return json.loads(raw or b"null")
        except ValueError:
            raise AdminError(
                0, f"{self.base_url} answered with something other than JSON: is it the admin API?"
            ) from None


def _why(reason: object) -> str:
    """A short lowercase reason: "connection refused", "timed out", ..."""
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, TimeoutError):
        return "timed out"
    if isinstance(reason, socket.gaierror):
        return f"cannot resolve the host ({reason.strerror})"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror.lower()
    return str(reason)
