"""How the suppression list knows an address again: one normal form, then a keyed hash.

The normal form folds what mail systems treat as the same mailbox in practice:

- surrounding white space and a trailing dot on the domain are dropped;
- the domain is lower-cased and written in IDNA (``bücher.example`` and
  ``xn--bcher-kva.example`` are one domain);
- the local part is put in Unicode NFC and lower-cased. RFC 5321 lets a server treat
  ``Anna@`` and ``anna@`` as two mailboxes; almost none does, and for a list that
  stops mail, folding too much only errs on the side of not mailing.

Not folded, because they are different mailboxes for some providers: dots in the
local part (``a.nna@`` is ``anna@`` only at Gmail), ``+tag`` sub-addresses,
provider aliases (``googlemail.com``), and quoted local parts.

The list is keyed by HMAC-SHA256 of the normal form with a key the ledger made for
itself at migration, so an entry keeps working after its readable address is erased.
Anyone holding the database (and so the key) can still test a guessed address: the
hash hides an address from a listing, not from its owner's name.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import unicodedata

import idna


class NotAnAddress(ValueError):
    """The text has no ``local@domain`` shape."""


def normalized_address(address: str) -> str:
    text = address.strip()
    local, at, domain = text.rpartition("@")
    domain = domain.strip().rstrip(".")
    if not at or not local or not domain:
        raise NotAnAddress(f"{address!r} is not an email address (local@domain)")
    domain = domain.lower()
    # Not a valid IDNA name: the lower-cased text still names it the same way every time.
    with contextlib.suppress(idna.IDNAError):
        domain = idna.encode(domain, uts46=True).decode("ascii")
    return f"{unicodedata.normalize('NFC', local).lower()}@{domain}"


def address_key(address: str, key: bytes) -> str:
    """The entry's key: HMAC-SHA256 of the normal form, in hex."""
    digest = hmac.new(key, normalized_address(address).encode(), hashlib.sha256)
    return digest.hexdigest()
