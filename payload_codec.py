"""Encrypts every payload Dealflow hands Temporal: the server stores only ciphertext.

Deal inputs, signals, activity arguments and results, queries and their answers carry
buyer names, email addresses, prices and interview answers. The codec seals each
payload (the whole serialized ``Payload``, its metadata too) with AES-256-GCM under the
first key of ``DEALFLOW_CODEC_KEYS``, and writes that key's id in the outer payload's
metadata. Decoding looks the id up among all the keys, so a key can be rotated: put the
new one first, keep the old ones until no open deal's history needs them.

Payloads without our encoding pass through untouched: histories recorded before
encryption (tests/histories/) still replay, and a deal started before encryption was
switched on keeps running. Failure messages and stack traces are moved into an
encrypted payload too. Search attributes and workflow ids are never encoded (Temporal
must read them): they must hold no buyer data.

Shaped after temporalio/samples-python ``encryption/codec.py``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import (
    DataConverter,
    DefaultFailureConverterWithEncodedAttributes,
    PayloadCodec,
)

ENCODING = b"binary/dealflow-aes256gcm"
KEY_ID = "dealflow-key-id"
NONCE_BYTES = 12


class UndecryptablePayload(ValueError):
    """A payload sealed with a key we do not hold, or altered on its way."""


class EncryptionCodec(PayloadCodec):
    """AES-256-GCM with a random 96-bit nonce per payload; the key id is authenticated too."""

    def __init__(self, keys: Sequence[tuple[str, bytes]]) -> None:
        if not keys:
            raise ValueError("the payload codec needs at least one key")
        self.key_id = keys[0][0]
        self._ciphers = {key_id: AESGCM(key) for key_id, key in keys}

    def __repr__(self) -> str:
        # Never the keys.
        return f"EncryptionCodec(encrypts with {self.key_id!r}, {len(self._ciphers)} keys)"

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.seal(payload) for payload in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.open(payload) for payload in payloads]

    def seal(self, payload: Payload) -> Payload:
        key_id = self.key_id.encode()
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._ciphers[self.key_id].encrypt(nonce, payload.SerializeToString(), key_id)
        return Payload(metadata={"encoding": ENCODING, KEY_ID: key_id}, data=nonce + sealed)

    def open(self, payload: Payload) -> Payload:
        if payload.metadata.get("encoding") != ENCODING:
            return payload  # not ours: recorded before encryption, or a search attribute
        key_id = payload.metadata.get(KEY_ID, b"").decode(errors="replace")
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise UndecryptablePayload(
                f"a payload is sealed with key {key_id!r}, which DEALFLOW_CODEC_KEYS does not "
                f"hold (it holds {sorted(self._ciphers)}); add the old key after the current one"
            )
        try:
            plain = cipher.decrypt(
                payload.data[:NONCE_BYTES], payload.data[NONCE_BYTES:], key_id.encode()
            )
        except InvalidTag:
            raise UndecryptablePayload(
                f"a payload sealed with key {key_id!r} does not decrypt: altered, or that id "
                "names a different key here"
            ) from None
        return Payload.FromString(plain)


def encrypted_data_converter(keys: Sequence[tuple[str, bytes]]) -> DataConverter:
    """The pydantic data converter with the codec: what every Dealflow client uses.

    Failures' messages and stack traces (an activity's error may quote an address) go
    into an encoded payload too, instead of the failure's plain-text fields."""
    return dataclasses.replace(
        pydantic_data_converter,
        payload_codec=EncryptionCodec(keys),
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
    )
