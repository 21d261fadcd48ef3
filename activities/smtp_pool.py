"""A small pool of persistent SMTP connections shared by all send activities of a worker.

Opening a connection per email costs roughly half the throughput of reusing one
(measured on loopback), so connections are kept and reused.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Literal

import aiosmtplib
from aiosmtplib.email import quote_address
from aiosmtplib.response import SMTPResponse
from aiosmtplib.typing import Default, SMTPStatus

# Envelope addresses whose quoted form is remembered (a sender, the recipients).
QUOTED_REMEMBERED = 4096


@functools.lru_cache(maxsize=QUOTED_REMEMBERED)
def _quoted(address: str) -> str:
    # aiosmtplib's own quoting and checks; an address it refuses raises every time.
    return quote_address(address)


class _Client(aiosmtplib.SMTP):
    """aiosmtplib's client, with MAIL and RCPT quoting an address from memory: parsing
    it (``email.utils.parseaddr``) each time was a twentieth of a send's CPU. The
    commands, their checks and their errors are aiosmtplib's own (5.x); MAIL also makes
    ``sendmail``'s check that a relay offers SMTPUTF8 before it is asked for."""

    async def mail(
        self,
        sender: str,
        /,
        *,
        options: Iterable[str] | None = None,
        encoding: str = "ascii",
        timeout: float | Literal[Default.token] | None = Default.token,  # noqa: ASYNC109
    ) -> SMTPResponse:
        await self._ehlo_or_helo_if_needed()
        options = list(options or ())
        if "SMTPUTF8" in options and not self.supports_extension("smtputf8"):
            # Such a relay would refuse a UTF-8 address, or mangle it on its way.
            raise aiosmtplib.SMTPNotSupported("SMTPUTF8 is not supported by this server")
        response = await self.execute_command(
            b"MAIL",
            b"FROM:" + _quoted(sender).encode(encoding),
            *(option.encode("ascii") for option in options),
            timeout=timeout,
        )
        if response.code != SMTPStatus.completed:
            raise aiosmtplib.SMTPSenderRefused(response.code, response.message, sender)
        return response

    async def rcpt(
        self,
        recipient: str,
        /,
        *,
        options: Iterable[str] | None = None,
        encoding: str = "ascii",
        timeout: float | Literal[Default.token] | None = Default.token,  # noqa: ASYNC109
    ) -> SMTPResponse:
        await self._ehlo_or_helo_if_needed()
        response = await self.execute_command(
            b"RCPT",
            b"TO:" + _quoted(recipient).encode(encoding),
            *(option.encode("ascii") for option in options or ()),
            timeout=timeout,
        )
        if response.code not in (SMTPStatus.completed, SMTPStatus.will_forward):
            raise aiosmtplib.SMTPRecipientRefused(response.code, response.message, recipient)
        return response


@dataclass(frozen=True)
class SmtpEndpoint:
    host: str
    port: int
    tls: str = "none"  # "starttls", "implicit" or "none"
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # never in a log or a traceback
    timeout: float = 30.0


class SmtpPool:
    def __init__(self, endpoint: SmtpEndpoint, size: int = 16) -> None:
        self.endpoint = endpoint
        self._idle: list[aiosmtplib.SMTP] = []
        self._slots = asyncio.Semaphore(size)

    def _client(self) -> aiosmtplib.SMTP:
        e = self.endpoint
        # start_tls=None would upgrade only when offered and silently send in clear
        # otherwise; every mode here is explicit.
        return _Client(
            hostname=e.host,
            port=e.port,
            use_tls=e.tls == "implicit",
            start_tls=e.tls == "starttls",
            timeout=e.timeout,
            username=e.username,
            password=e.password,
            tls_context=ssl.create_default_context() if e.tls != "none" else None,
        )

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[aiosmtplib.SMTP]:
        """A connected client; it returns to the pool only if the block raised nothing."""
        async with self._slots:
            client = None
            while self._idle:
                candidate = self._idle.pop()
                if candidate.is_connected:
                    client = candidate
                    break
            if client is None:
                client = self._client()
                await client.connect()
            try:
                yield client
            except BaseException:
                # The session state is unknown after an error: never reuse it.
                client.close()
                raise
            self._idle.append(client)

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for client in idle:
            try:
                await client.quit()
            except (aiosmtplib.SMTPException, OSError):
                client.close()
