"""Who may see the dashboard.

The page shows every deal's company, owner and value, so beyond this machine it needs
sign-in, one of:

- users with argon2 password hashes (``DEALFLOW_DASHBOARD_USERS``), by HTTP Basic
  authentication (the browser asks; put the dashboard behind TLS, Basic sends the
  password with every request);
- a header that a trusted reverse proxy sets to the signed-in user
  (``DEALFLOW_DASHBOARD_PROXY_HEADER``), believed only from the proxy's addresses
  (``DEALFLOW_DASHBOARD_PROXY_ADDRESSES``): anyone else could send it too.

With neither, the dashboard answers loopback clients only and refuses to listen beyond
loopback (``DashboardRefused``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import ipaddress
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from settings import ENV_PREFIX, Settings, _is_loopback, parse_dashboard_users
from workflows import bounds

# A hash to verify against when the user is unknown, so that a wrong name costs as
# long as a wrong password (no way to tell which names exist by timing).
_HASHER = PasswordHasher()

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class DashboardRefused(Exception):
    """The dashboard must not listen as configured; the message says what to set."""


@dataclass(frozen=True)
class Visitor:
    """Who asked: ``user`` is None for an unsigned loopback visitor."""

    user: str | None


class Access:
    def __init__(self, settings: Settings) -> None:
        users = settings.dashboard_users
        self._users = parse_dashboard_users(users.get_secret_value()) if users else {}
        self._header = settings.dashboard_proxy_header
        self._proxies: list[Network] = [
            ipaddress.ip_network(address, strict=False) for address in settings.dashboard_proxies
        ]

    @property
    def signs_in(self) -> bool:
        return bool(self._users) or self._header is not None

    @property
    def uses_passwords(self) -> bool:
        return bool(self._users)

    def check_listening(self, host: str) -> None:
        """Refuse a listener beyond loopback that nobody has to sign in to."""
        if not _is_loopback(host) and not self.signs_in:
            raise DashboardRefused(
                f"the dashboard would listen on {host} with no sign-in; set "
                f"{ENV_PREFIX}DASHBOARD_USERS (python starter.py dashboard hash-password NAME) "
                f"or {ENV_PREFIX}DASHBOARD_PROXY_HEADER, or {ENV_PREFIX}DASHBOARD_HOST=127.0.0.1"
            )

    async def visitor(
        self, client_host: str | None, headers: dict[str, str] | None = None
    ) -> Visitor | None:
        """The visitor a request comes from, or None when it must sign in first."""
        headers = headers or {}
        if self._header is not None and self._from_proxy(client_host):
            named = headers.get(self._header.lower(), "").strip()
            # A name longer than an email address is no user the proxy signed in.
            if named and len(named) <= bounds.MAX_ADDRESS and named.isprintable():
                return Visitor(user=named)
        if self._users:
            return await self._basic(headers.get("authorization", ""))
        if not self.signs_in and client_host is not None and _is_loopback(client_host):
            return Visitor(user=None)
        return None

    def _from_proxy(self, client_host: str | None) -> bool:
        if client_host is None:
            return False
        try:
            address = ipaddress.ip_address(client_host)
        except ValueError:
            return False
        return any(address in network for network in self._proxies)

    async def _basic(self, authorization: str) -> Visitor | None:
        scheme, _, encoded = authorization.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            name, colon, password = base64.b64decode(encoded.strip()).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        if not colon:
            return None
        hashed = self._users.get(name) or _decoy()
        # argon2 is slow on purpose: off the event loop, so other pages keep loading.
        if await asyncio.to_thread(_verifies, hashed, password) and name in self._users:
            return Visitor(user=name)
        return None


@functools.cache
def _decoy() -> str:
    return _HASHER.hash("not a password anyone has")


def _verifies(hashed: str, password: str) -> bool:
    try:
        return _HASHER.verify(hashed, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def hash_password(password: str) -> str:
    """The argon2id hash of ``password``, for ``DEALFLOW_DASHBOARD_USERS``."""
    return _HASHER.hash(password)
