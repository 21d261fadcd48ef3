"""The MIME composer, over generated headers (hypothesis): what a mail reader parses back
is exactly the subject, sender and recipients we meant, and no header line is over 998
characters (RFC 5322) whatever the text."""

from __future__ import annotations

from email import message_from_bytes, policy
from email.headerregistry import Address

from hypothesis import given, settings
from hypothesis import strategies as st

from activities.mime import Mailbox, compose

# What the boundary lets through: no control characters (names and subjects are refused
# with them), any other Unicode, long words included.
text = st.text(
    alphabet=st.characters(exclude_categories=["Cc", "Cs", "Zl", "Zp"]), max_size=1200
).map(lambda t: " ".join(t.split()))
names = st.text(
    alphabet=st.characters(exclude_categories=["Cc", "Cs", "Zl", "Zp"]), max_size=120
).map(lambda t: " ".join(t.split()))
local_parts = st.from_regex(r"[a-z0-9][a-z0-9._+-]{0,30}[a-z0-9]", fullmatch=True).filter(
    lambda local: ".." not in local
)
addresses = st.builds(
    lambda local, n: f"{local}@buyer{n}.example.org", local_parts, st.integers(0, 9)
)
mailboxes = st.builds(Mailbox, names, addresses)


@settings(max_examples=300, deadline=None, database=None)
@given(
    sender=mailboxes,
    to=st.lists(mailboxes, min_size=1, max_size=6, unique_by=lambda m: m.address),
    subject=text,
    body=st.text(max_size=2000),
)
def test_composed_headers_round_trip_exactly(
    sender: Mailbox, to: list[Mailbox], subject: str, body: str
) -> None:
    message_id = "<wx6qf7buxecnvwsdr5cgcgsd7rbqanh4cwigfu3hvu6e2w6uwcrzi6q@seller.example.com>"
    composed = compose(
        sender=sender, to=to, subject=subject, text=body or "-", html="<p>-</p>",
        headers=[("In-Reply-To", message_id)], message_id=message_id,
    )  # fmt: skip
    head = composed.data.split(b"\r\n\r\n", 1)[0]
    assert max(len(line) for line in head.split(b"\r\n")) <= 998

    parsed = message_from_bytes(composed.data, policy=policy.default)
    assert str(parsed["Subject"]) == subject
    assert str(parsed["Message-ID"]) == message_id
    # Threading headers are matched as written: never encoded, whatever else is.
    assert f"In-Reply-To: {message_id}".encode() in head
    assert composed.recipients == [mailbox.address for mailbox in to]
    assert composed.sender == sender.address
    read_to: tuple[Address, ...] = parsed["To"].addresses
    assert [(a.display_name, a.addr_spec) for a in read_to] == [(m.name, m.address) for m in to]
    (read_from,) = parsed["From"].addresses
    assert (read_from.display_name, read_from.addr_spec) == (sender.name, sender.address)
