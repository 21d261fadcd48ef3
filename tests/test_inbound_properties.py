"""Properties of the mailbox reader's pure half, over generated mail (hypothesis): the
parser never raises, and whatever it reads becomes a batch the poller's workflow can
decode and signals the deals can accept."""

from __future__ import annotations

from email.message import EmailMessage

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from activities.inbound_mail import read_inbound
from activities.mailbox import LIMITS, ImapEndpoint, MailboxBatch, MailboxCursor, MailboxReader
from activities.signed_tokens import TokenSigner
from workflows.mailbox_poller import SIGNALLED, inbound_message

SIGNER = TokenSigner("x" * 32)
READER = MailboxReader(
    ImapEndpoint(host="127.0.0.1", port=1, tls="none", username="sales", password="-"),
    SIGNER,
    own_addresses=["sales@example.com"],
    unsubscribe_address="sales+unsubscribe@example.com",
    domains=["example.com"],
)
EXAMPLES = settings(
    max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)

header_names = st.sampled_from(
    ["From", "To", "Subject", "Message-ID", "In-Reply-To", "References", "Content-Type",
     "Auto-Submitted", "Content-Transfer-Encoding", "Date", "X-Autoreply", "List-Id"]
)  # fmt: skip
header_values = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.sampled_from(
        [
            b"<D-1.001-proposal@example.com>",
            b"multipart/mixed; boundary=x",
            b"=?utf-8?b?AAAA?=",
            b"=?bogus?q?=ff=00?=",
            b"auto-replied",
            b"message/delivery-status",
            b"base64",
        ]
    ),
)
raw_messages = st.one_of(
    st.binary(max_size=3000),
    st.builds(
        lambda headers, body: (
            b"".join(n.encode() + b": " + v + b"\r\n" for n, v in headers) + b"\r\n" + body
        ),
        st.lists(st.tuples(header_names, header_values), max_size=12),
        st.binary(max_size=2000),
    ),
)


def _survives_the_poller(raw: bytes) -> None:
    entry = READER.read_safely(7, raw, size=len(raw))
    # What the activity returns is what the workflow decodes: a round trip must hold.
    batch = MailboxBatch(cursor=MailboxCursor(uid_validity=1, last_uid=7), entries=[entry])
    decoded = MailboxBatch.model_validate_json(batch.model_dump_json())
    for name, limit in LIMITS.items():
        assert len(getattr(decoded.entries[0], name)) <= limit
    kind = SIGNALLED.get(entry.kind)
    if kind is not None:
        inbound_message(entry, kind)  # never raises for what the reader returns


@EXAMPLES
@given(raw=raw_messages)
def test_the_parser_never_raises_and_the_poller_input_always_validates(raw: bytes) -> None:
    read_inbound(raw, ["sales@example.com"], "sales+unsubscribe@example.com")
    _survives_the_poller(raw)


@EXAMPLES
@given(
    subject=st.text(max_size=2000),
    sender=st.text(max_size=400),
    body=st.text(max_size=3000),
    reply_to_ours=st.booleans(),
)
def test_well_formed_mail_with_hostile_text_always_validates(
    subject: str, sender: str, body: str, reply_to_ours: bool
) -> None:
    mail = EmailMessage()
    for name, value in (("Subject", subject), ("From", f"{sender} <x@buyer.example.org>")):
        try:
            mail[name] = value
        except Exception:  # the stdlib's own parser fails on some (AttributeError on ".")
            mail[name] = "?"
    mail["To"] = "sales@example.com"
    mail["Message-ID"] = "<m1@buyer.example.org>"
    if reply_to_ours:
        mail["In-Reply-To"] = "<D-1.001-proposal@example.com>"
    mail.set_content(body)
    try:
        raw = bytes(mail)
    except (ValueError, TypeError, UnicodeError):
        return  # the stdlib cannot write it: no mailbox will hold it either
    _survives_the_poller(raw)
