"""Tokens we hand out in emails and later get back from the world.

Two kinds, both signed with the one signing secret (``DEALFLOW_SIGNING_SECRET``), and
both an id and a MAC that the ledger resolves (``ledger.email_tokens``), so that a token
names nothing, neither deal nor address, to whoever reads the email:

- the **reply token** in the Reply-To address (``sales+r<32 base32 characters>@...``):
  a reply that lost its In-Reply-To and References headers still finds its deal;
- the **unsubscribe token** in the List-Unsubscribe links (``t2.`` and 43 characters):
  one a recipient, it opts out exactly that recipient and cannot be forged to
  unsubscribe someone else.

Emails sent before these carry older forms, still accepted: the reply token
``sales+D-100.3f9a1c2b7e`` (the deal id and a 40-bit signature), and the ``u1.``
unsubscribe token (the deal and the address encrypted with AES-SIV).

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


# Marks the encrypted unsubscribe token of emails sent before the ledger's (below); the
# readable one before it has no prefix.
_OPAQUE = "u1."
# Marks the unsubscribe token the ledger resolves: base64url of its id and its MAC.
LEDGER_TOKEN = "t2."
# 128 bits each: ids never collide by chance, and a MAC cannot be guessed.
UNSUBSCRIBE_ID_BYTES = 16
UNSUBSCRIBE_MAC_BYTES = 16
# The reply token must fit a local part (64 characters at most) after ``sales+``: 80 bits
# of id and 80 of MAC, in lowercase base32 (mail systems may lower-case a local part).
REPLY_ID_BYTES = 10
REPLY_MAC_BYTES = 10
_REPLY_MARK = "r"
_LEDGER_REPLY_TOKEN = re.compile(r"^r(?P<token>[a-z2-7]{32})$")


class BadToken(ValueError):
    """The token was not made by us (tampered, truncated, or signed with another secret)."""


@dataclass(frozen=True)
class Unsubscribe:
    deal_id: str
    # Everyone the email went to: one click cannot tell which of them clicked.
    addresses: tuple[str, ...]


def is_ledger_token(token: str) -> bool:
    """Whether ``token`` is of the kind the ledger resolves (else an older, self-contained one)."""
    return token.strip().startswith(LEDGER_TOKEN)


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
        # A key of its own for each use: an id of one kind is never a MAC of another.
        self._derived = {
            purpose: [
                hmac.new(key, purpose.encode(), hashlib.sha256).digest() for key in self._keys
            ]
            for purpose in ("unsubscribe-id", "unsubscribe-mac", "reply-id", "reply-mac")
        }

    def _tag(self, purpose: str, data: bytes, length: int, number: int = 0) -> bytes:
        return hmac.new(self._derived[purpose][number], data, hashlib.sha256).digest()[:length]

    def _tagged_by_us(self, purpose: str, data: bytes, given: bytes) -> bool:
        """Whether any of our secrets, current or previous, made the MAC ``given`` of ``data``."""
        return any(
            hmac.compare_digest(given, self._tag(purpose, data, len(given), number))
            for number in range(len(self._keys))
        )

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

    def reply_token_id(self, deal_id: str) -> str:
        """The id the ledger knows the deal's reply token by (hex): the same for every email
        of the deal, so the ledger holds one row a deal."""
        return self._tag("reply-id", deal_id.encode(), REPLY_ID_BYTES).hex()

    def reply_token(self, deal_id: str) -> str:
        """``r`` and base32 of the token's id and MAC: 33 characters, whatever the deal id."""
        token_id = bytes.fromhex(self.reply_token_id(deal_id))
        sealed = token_id + self._tag("reply-mac", token_id, REPLY_MAC_BYTES)
        return _REPLY_MARK + base64.b32encode(sealed).decode().lower()

    def reply_address(self, base: str, deal_id: str) -> str:
        """``sales@example.com`` -> ``sales+<token>@example.com``."""
        local, _, domain = base.rpartition("@")
        return f"{local}+{self.reply_token(deal_id)}@{domain}"

    def old_reply_address(self, base: str, deal_id: str) -> str:
        """The Reply-To of emails sent before the ledger's token (``sales+D-100.3f9a1c2b7e``):
        nothing sends it any more; it is made here for the tests of those emails' replies."""
        local, _, domain = base.rpartition("@")
        signature = self._mac("reply", deal_id).hex()[:_REPLY_SIGNATURE_LENGTH]
        return f"{local}+{deal_id}.{signature}@{domain}"

    def reply_token_id_of(self, address: str) -> str | None:
        """The id (hex) in a ``local+r...@domain`` address we made, for the ledger to
        resolve; None when the address has no such token or we did not sign it."""
        local = address.rpartition("@")[0]
        _, plus, token = local.partition("+")
        found = _LEDGER_REPLY_TOKEN.match(token.lower()) if plus else None
        if found is None:
            return None
        sealed = base64.b32decode(found["token"].upper())
        token_id, given = sealed[:REPLY_ID_BYTES], sealed[REPLY_ID_BYTES:]
        return token_id.hex() if self._tagged_by_us("reply-mac", token_id, given) else None

    def deal_of_reply_address(self, address: str) -> str | None:
        """The deal named by an old-form ``local+D-100.3f9a1c2b7e@domain`` address we made
        (emails sent before the ledger's reply token), else None."""
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

    def unsubscribe_token_id(self, message_id: str, position: int, address: str) -> str:
        """The id (hex) of the link in the copy of ``message_id`` that goes to ``address``,
        ``position`` in its To list: every retry and resend of that copy gets the same one.
        The address is in it so that a resend whose To list changed gives the person now
        at ``position`` a link of their own, not the one of whoever stood there before."""
        data = f"{message_id}\n{position}\n{address.strip().lower()}".encode()
        return self._tag("unsubscribe-id", data, UNSUBSCRIBE_ID_BYTES).hex()

    def ledger_unsubscribe_token(self, token_id: str) -> str:
        """``t2.`` and base64url of the id and its 128-bit MAC."""
        raw = bytes.fromhex(token_id)
        return LEDGER_TOKEN + _b64(raw + self._tag("unsubscribe-mac", raw, UNSUBSCRIBE_MAC_BYTES))

    def unsubscribe_token_id_of(self, token: str) -> str:
        """The id (hex) of a ``t2.`` token, for the ledger to resolve; ``BadToken`` when we
        did not make it (altered, cut, or signed with a secret no longer kept)."""
        text = token.strip().removeprefix(LEDGER_TOKEN)
        try:
            raw = _unb64(text)
        except (ValueError, binascii.Error):
            raise BadToken("the unsubscribe link is damaged") from None
        if len(raw) != UNSUBSCRIBE_ID_BYTES + UNSUBSCRIBE_MAC_BYTES:
            raise BadToken("the unsubscribe link is incomplete")
        token_id, given = raw[:UNSUBSCRIBE_ID_BYTES], raw[UNSUBSCRIBE_ID_BYTES:]
        if not self._tagged_by_us("unsubscribe-mac", token_id, given):
            raise BadToken("the unsubscribe link was not issued by us or was altered")
        return token_id.hex()

    def unsubscribe_token(self, deal_id: str, addresses: str | Sequence[str]) -> str:
        """The ``u1.`` token of emails sent before the ledger's: the deal and the addresses
        encrypted and authenticated (AES-SIV, a 128-bit tag). Nothing sends it any more;
        it is made here for the tests of those emails' links."""
        named = [addresses] if isinstance(addresses, str) else list(addresses)
        text = json.dumps([deal_id, [a.lower() for a in named]], separators=(",", ":"))
        return _OPAQUE + _b64(self._unsubscribers[0].encrypt(text.encode(), None))

    def unsubscribe(self, token: str) -> Unsubscribe:
        """The deal and addresses an older (``u1.`` or readable) token names; ``BadToken``
        when we did not sign it. A ``t2.`` token names nothing: the ledger resolves it."""
        token = token.strip()
        if is_ledger_token(token):
            raise BadToken("the unsubscribe link is resolved by the ledger, not by itself")
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
