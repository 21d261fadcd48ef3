"""Tokens we hand out in emails and later get back from the world.

Two kinds, both signed with the one signing secret (``DEALFLOW_SIGNING_SECRET``):

- the **reply token** in the Reply-To address (``sales+D-100.3f9a1c2b7e@example.com``):
  a reply that lost its In-Reply-To and References headers still names its deal;
- the **unsubscribe token** in the List-Unsubscribe links: opaque (encrypted), it names
  the deal and the addresses, and cannot be forged to unsubscribe someone else.

and it seals our **Message-IDs**: the local part the deal gives an email (deal id and
step) is encrypted and authenticated (AES-SIV), so the header names no deal, shows no
guessable sequence, and a reply or bounce can only match a deal through an id we made.

None of these ever enters a workflow's history: the send activity adds them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESSIV

# Hex, lowercase: some mail systems lower-case the local part of an address.
_REPLY_SIGNATURE_LENGTH = 10
_REPLY_TOKEN = re.compile(r"^(?P<deal>[A-Za-z0-9][A-Za-z0-9._-]{0,63})\.(?P<sig>[0-9a-f]{10})$")


# Marks the opaque unsubscribe token (the readable one it replaced has no prefix).
_OPAQUE = "u1."


class BadToken(ValueError):
    """The token was not made by us (tampered, truncated, or signed with another secret)."""


@dataclass(frozen=True)
class Unsubscribe:
    deal_id: str
    # Everyone the email went to: one click cannot tell which of them clicked.
    addresses: tuple[str, ...]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


_SEALED = re.compile(r"^<(?P<local>[a-z2-7]{32,200})@(?P<domain>[^<>@\s]+)>$")


class TokenSigner:
    """Signs with ``secret``; also accepts what ``previous`` secrets signed (rotation: the
    links and ids in emails sent before the change keep working)."""

    def __init__(self, secret: str, previous: Sequence[str] = ()) -> None:
        self._key = secret.encode()
        self._keys = [self._key, *(old.encode() for old in previous if old)]
        # AES-256-SIV: deterministic (every retry and resend of an email gets the same
        # id) and authenticated (a 128-bit tag over the deal and the step).
        self._sealers = [
            AESSIV(hmac.new(key, b"message-id", hashlib.sha512).digest()) for key in self._keys
        ]
        self._sealer = self._sealers[0]
        self._unsubscribers = [
            AESSIV(hmac.new(key, b"unsubscribe-token", hashlib.sha512).digest())
            for key in self._keys
        ]

    def _mac(self, purpose: str, payload: str, key: bytes | None = None) -> bytes:
        message = f"{purpose}:{payload}".encode()
        return hmac.new(key or self._key, message, hashlib.sha256).digest()

    def _signed(self, purpose: str, payload: str, given: bytes, length: int) -> bool:
        """Whether any of our secrets, current or previous, made ``given``."""
        return any(
            hmac.compare_digest(given, self._mac(purpose, payload, key)[:length])
            for key in self._keys
        )

    # --- reply tokens ---

    def reply_token(self, deal_id: str) -> str:
        signature = self._mac("reply", deal_id).hex()[:_REPLY_SIGNATURE_LENGTH]
        return f"{deal_id}.{signature}"

    def reply_address(self, base: str, deal_id: str) -> str:
        """``sales@example.com`` -> ``sales+<token>@example.com``."""
        local, _, domain = base.rpartition("@")
        return f"{local}+{self.reply_token(deal_id)}@{domain}"

    def deal_of_reply_address(self, address: str) -> str | None:
        """The deal named by a ``local+token@domain`` address we made, else None."""
        local = address.rpartition("@")[0]
        _, plus, token = local.partition("+")
        found = _REPLY_TOKEN.match(token) if plus else None
        if found is None:
            return None
        deal_id = found["deal"]
        given = found["sig"]
        return (
            deal_id
            if any(
                hmac.compare_digest(given, self._mac("reply", deal_id, key).hex()[: len(given)])
                for key in self._keys
            )
            else None
        )

    # --- unsubscribe tokens ---

    def unsubscribe_token(self, deal_id: str, addresses: str | Sequence[str]) -> str:
        """Opaque: the deal and the addresses encrypted and authenticated (AES-SIV, a
        128-bit tag), so a link names no address in readable form."""
        named = [addresses] if isinstance(addresses, str) else list(addresses)
        text = json.dumps([deal_id, [a.lower() for a in named]], separators=(",", ":"))
        return _OPAQUE + _b64(self._unsubscribers[0].encrypt(text.encode(), None))

    def unsubscribe(self, token: str) -> Unsubscribe:
        """The deal and address a token names; ``BadToken`` when we did not sign it."""
        token = token.strip()
        if token.startswith(_OPAQUE):
            return self._opaque_unsubscribe(token.removeprefix(_OPAQUE))
        # The readable, HMAC-signed form of links in emails sent before the opaque one.
        payload, dot, signature = token.partition(".")
        if not dot:
            raise BadToken("the unsubscribe link is incomplete")
        try:
            given = _unb64(signature)
        except ValueError:
            raise BadToken("the unsubscribe link is damaged") from None
        if not self._signed("unsubscribe", payload, given, 16):
            raise BadToken("the unsubscribe link was not issued by us or was altered")
        try:
            deal_id, addresses = json.loads(_unb64(payload))
            return Unsubscribe(deal_id=str(deal_id), addresses=tuple(str(a) for a in addresses))
        except (ValueError, TypeError):
            raise BadToken("the unsubscribe link is damaged") from None

    def _opaque_unsubscribe(self, sealed_text: str) -> Unsubscribe:
        try:
            sealed = _unb64(sealed_text)
        except ValueError:
            raise BadToken("the unsubscribe link is damaged") from None
        for unsubscriber in self._unsubscribers:
            try:
                deal_id, addresses = json.loads(unsubscriber.decrypt(sealed, None))
            except (InvalidTag, ValueError, TypeError):
                continue
            return Unsubscribe(deal_id=str(deal_id), addresses=tuple(str(a) for a in addresses))
        raise BadToken("the unsubscribe link was not issued by us or was altered")

    # --- Message-IDs ---

    def seal_message_id(self, message_id: str) -> str:
        """``<D-100.001-proposal@example.com>`` -> ``<(72 base32 characters)@example.com>``."""
        local, at, domain = message_id.strip().strip("<>").rpartition("@")
        if not at or not local:
            raise ValueError(f"{message_id!r} is not a Message-ID")
        sealed = self._sealer.encrypt(local.encode(), None)
        return f"<{base64.b32encode(sealed).decode().rstrip('=').lower()}@{domain}>"

    def open_message_id(self, message_id: str) -> str | None:
        """The Message-ID we sealed as ``message_id``, else None (forged, altered, not ours)."""
        found = _SEALED.match(message_id.strip())
        if found is None:
            return None
        text = found["local"].upper()
        try:
            sealed = base64.b32decode(text + "=" * (-len(text) % 8))
        except (binascii.Error, ValueError):
            return None
        for sealer in self._sealers:
            try:
                local = sealer.decrypt(sealed, None).decode()
            except (InvalidTag, UnicodeDecodeError, ValueError):
                continue
            return f"<{local}@{found['domain']}>"
        return None
