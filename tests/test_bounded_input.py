"""Every value a deal takes in is bounded where it arrives, and refused with one line.

The reproductions of "no input can freeze a deal": each once started a deal (or a CSV
run) that then failed, or tracebacked; each is now a ``BadInput`` naming the field and
the bound. The deal's own guards (validators, arithmetic) are in test_hostile_input.py.
"""

from __future__ import annotations

import codecs
import json
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from deal_intake import (
    CSV_COLUMNS,
    MAX_CSV_FIELD,
    MAX_CSV_ROWS,
    BadInput,
    build_deal,
    deal_from_row,
    local_moment,
    parse_date,
    parse_item,
    read_csv,
    read_deal_file,
    today,
)
from settings import Settings, load_settings
from workflows import bounds, pricing
from workflows.business_calendar import BusinessCalendar, BusinessDays
from workflows.models import Cadence, LineItem, OrderPlaced, ShiftPolicy
from workflows.schedule import HORIZON, Action, Schedule, next_step, upcoming
from workflows.stages import Stage

BUYER = {"name": "Ann Buyer", "email": "ann@buyer.example.org", "time_zone": "UTC"}


def settings() -> Settings:
    return load_settings(_env_file=None)


def deal(**fields: Any) -> dict[str, Any]:
    return {
        "deal_id": "D-1",
        "company": "Acme",
        "kind": "rfq",
        "contacts": [BUYER],
        "items": [{"name": "Widget", "quantity": "2", "list_price": "100"}],
        **fields,
    }


def refusal(fields: dict[str, Any]) -> str:
    with pytest.raises(BadInput) as refused:
        build_deal(settings(), fields)
    message = str(refused.value)
    assert "\n" not in message
    return message


def test_a_sane_deal_passes() -> None:
    built = build_deal(settings(), deal(currency="CHF"))
    assert built.currency == "CHF" and pricing.list_total(built.items) == Decimal("200.00")


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        # The reproductions: each once started a deal whose workflow task then failed.
        (
            {"items": [{"name": "W", "quantity": "1e30", "list_price": "100"}]},
            "items.0.quantity 1E+30 is over the most a line can hold, 1,000,000,000",
        ),
        (
            {"contacts": [{**BUYER, "name": "Ann\nBcc: all@example.org"}]},
            "contacts.0.name holds a line break (U+000A); remove it",
        ),
        ({"company": "x" * 100_000}, "company is 100,000 characters long; at most 200"),
        ({"currency": "ABC"}, "currency 'ABC' is not an ISO 4217 code"),
        # And the rest of the bounds.
        ({"company": "Acme\x00"}, "company holds a control character (U+0000)"),
        ({"company": "Acme\u2028Ltd"}, "company holds a line break (U+2028"),
        ({"contacts": [{**BUYER, "name": "n" * 201}]}, "contacts.0.name is 201 characters"),
        ({"items": [{"name": "W\tX", "list_price": "1"}]}, "items.0.name holds a control"),
        (
            {"items": [{"name": "W", "quantity": "1.00001", "list_price": "1"}]},
            "items.0.quantity 1.00001 has more than 4 decimal places",
        ),
        (
            {"items": [{"name": "W", "quantity": "1000000000", "list_price": "1000"}]},
            "items: the list total 1000000000000.00 is over the most a deal may be worth",
        ),
        ({"items": [{"name": "W", "list_price": "1"}] * 201}, "201 line items; at most 200"),
        (
            {"contacts": [{**BUYER, "email": f"a{n}@buyer.example.org"} for n in range(51)]},
            "contacts: 51 given; at most 50",
        ),
        ({"cadence": {"proposal": ["P400D"]}}, "cadence.proposal.0 is 400 days; at most 364"),
        ({"cadence": {"quote": ["P1D"] * 21}}, "cadence.quote: 21 follow-ups; at most 20"),
        (
            {"cadence": {"win_loss_after": "9999bd"}},
            "cadence.win_loss_after is 9,999 business days; at most 260",
        ),
        ({"cadence": {"no_response_after": "P5000D"}}, "cadence.no_response_after is 5,000"),
        # A negative delay passed intake; -8,408,072 days later overflowed the planner and
        # froze the deal after its follow-ups.
        (
            {"cadence": {"no_response_after": "-P8408072D"}},
            "cadence.no_response_after is negative (-8408072 days, 0:00:00); a delay is 0",
        ),
        ({"cadence": {"out_of_office_pause": "-PT1S"}}, "cadence.out_of_office_pause is negative"),
        (
            {"cadence": {"delivery_overdue_after": "-P1D"}},
            "cadence.delivery_overdue_after is negative",
        ),
        ({"send_retry_for": "P60D"}, "send_retry_for is over 30 days"),
        # A negative one once froze the deal: the server refuses the send's timeout.
        ({"send_retry_for": "-PT1H"}, "send_retry_for must be more than 0"),
        ({"send_retry_for": "PT0S"}, "send_retry_for must be more than 0"),
        (
            {"calendar": {"time_zone": "UTC", "holidays": ["9999-12-31"]}},
            "calendar.holidays 9999-12-31 is after",
        ),
    ],
    ids=lambda value: None if isinstance(value, dict) else value[:40],
)
def test_a_value_out_of_bounds_is_refused_naming_the_field(
    fields: dict[str, Any], says: str
) -> None:
    assert says in refusal(deal(**fields))


def test_a_calendar_without_a_business_day_for_400_days_is_refused() -> None:
    # The intake's own clock, which the check reads; 420 days leave room either side of
    # a midnight between the two reads.
    start = today()
    closed = [(start + timedelta(days=n)).isoformat() for n in range(420)]
    message = refusal(deal(calendar={"time_zone": "UTC", "holidays": closed}))
    assert "has no business day for 400 days" in message


def test_the_currency_list_is_iso_4217() -> None:
    for code in ("EUR", "USD", "JPY", "CHF", "SEK"):
        assert build_deal(settings(), deal(currency=code)).currency == code
    for code in ("XYZ", "EUX", "ABC"):
        assert "is not an ISO 4217 code" in refusal(deal(currency=code))


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        # A deal file may set these three; each once went to the workflow unchecked.
        (
            {"message_domain": "x" * 100_000},
            "message_domain is 100,000 characters long; at most 253",
        ),
        (
            {"message_domain": "example.com>\r\nBcc: all@example.org"},
            "message_domain holds a carriage return (U+000D",
        ),
        (
            {"message_domain": "exa mple.com"},
            "message_domain 'exa mple.com' is not a host name: Codepoint U+0020",
        ),
        ({"message_domain": ""}, "message_domain '' is not a host name: Empty domain"),
        ({"message_domain": "a" * 64 + ".com"}, "is not a host name: Label too long"),
        (
            {"message_domain": "bücher.example"},
            "message_domain 'bücher.example' should be written 'xn--bcher-kva.example' (IDNA)",
        ),
        ({"send_task_queue": "q" * 1001}, "send_task_queue 'qqqq"),
        ({"send_task_queue": ""}, "send_task_queue '' is not a task queue name"),
        ({"send_task_queue": "/_sys/dealflow"}, "is not a task queue name"),
        ({"send_task_queue": "send\nqueue"}, "is not a task queue name; use at most 200"),
        (
            {"routing": {f"t{n}": [] for n in range(101)}},
            "routing: 101 templates; at most 100",
        ),
        (
            {"routing": {"proposal": ["technical"] * 51}},
            "routing.proposal: 51 roles; at most 50",
        ),
        ({"routing": {"proposal": ["r" * 201]}}, "routing.proposal.0 is 201 characters long"),
        ({"routing": {"proposal": ["cto\x00"]}}, "routing.proposal.0 holds a control"),
        ({"routing": {"p\n": ["cto"]}}, "routing: template name holds a line break"),
    ],
    ids=lambda value: None if isinstance(value, dict) else value[:40],
)
def test_a_deal_files_domain_queue_and_routing_are_bounded(
    fields: dict[str, Any], says: str
) -> None:
    assert says in refusal(deal(**fields))


def test_sane_domain_queue_and_routing_pass() -> None:
    built = build_deal(
        settings(),
        deal(
            message_domain="Mail.XN--BCHER-KVA.example",
            send_task_queue="dealflow-send",
            routing={"proposal": ["technical", "economic_buyer"]},
        ),
    )
    assert built.send_task_queue == "dealflow-send"
    assert built.routing == {"proposal": ["technical", "economic_buyer"]}


def test_an_internationalised_sender_domain_goes_into_message_ids_as_its_a_label() -> None:
    idn = load_settings(_env_file=None, sender_address="sales@bücher.example")
    assert build_deal(idn, deal()).message_domain == "xn--bcher-kva.example"


def test_an_item_flag_out_of_bounds_is_refused() -> None:
    built = parse_item("Widget:1e30:100")  # the model alone takes it
    with pytest.raises(BadInput, match="over the most a line can hold"):
        build_deal(settings(), deal(items=[built.model_dump()]))


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("9999-12-31", "the date 9999-12-31 is after"),
        ("1999-12-31", "the date 1999-12-31 is before 2000-01-01"),
    ],
)
def test_a_date_outside_the_window_is_refused(text: str, says: str) -> None:
    with pytest.raises(BadInput, match=says):
        parse_date(text)
    with pytest.raises(BadInput, match=says):
        local_moment(text, "Europe/Berlin")
    with pytest.raises(BadInput, match="out of range"):
        local_moment("0001-01-01T00:00+05:00", "UTC")
    last = today().replace(year=today().year + 10)
    assert parse_date(last.isoformat()) == last
    with pytest.raises(BadInput, match="at most 10 years ahead"):
        parse_date((last + timedelta(days=1)).isoformat())


# --- deal files ---


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (json.dumps(deal(company="Müller"), ensure_ascii=False).encode("latin-1"), "is not UTF-8"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"company": ' + b"9" * 5000 + b"}", "is not a deal file"),
        (b"{" + b" " * (1024 * 1024) + b"}", "is over 1024 KiB"),
        (b"[1, 2]", "should hold one JSON object"),
    ],
    ids=["latin-1", "deep", "long-number", "huge", "not-an-object"],
)
def test_a_bad_deal_file_is_one_line(tmp_path: Path, content: bytes, says: str) -> None:
    path = tmp_path / "deal.json"
    path.write_bytes(content)
    with pytest.raises(BadInput) as refused:
        read_deal_file(path)
    assert says in str(refused.value) and "\n" not in str(refused.value)


def test_a_deal_file_with_a_bom_is_read(tmp_path: Path) -> None:
    path = tmp_path / "deal.json"
    path.write_bytes(codecs.BOM_UTF8 + json.dumps(deal(company="Müller")).encode())
    assert read_deal_file(path)["company"] == "Müller"


# --- CSV files ---

HEADER = ",".join(CSV_COLUMNS)


def row(deal_id: str, company: str = "Acme", items: str = "Widget:1:100") -> str:
    return f"{deal_id},{company},Ann,ann@buyer.example.org,UTC,,rfp,EUR,{items}"


def write(tmp_path: Path, content: bytes) -> Path:
    path = tmp_path / "deals.csv"
    path.write_bytes(content)
    return path


def test_an_excel_csv_utf8_file_with_a_bom_reads_every_column(tmp_path: Path) -> None:
    text = "\r\n".join([HEADER, row("D-1", "Müller GmbH"), row("D-2")]) + "\r\n"
    rows = read_csv(write(tmp_path, codecs.BOM_UTF8 + text.encode()))
    assert [(r.line, r.deal_id, r.problem) for r in rows] == [(2, "D-1", ""), (3, "D-2", "")]
    first = deal_from_row(settings(), rows[0].cells)
    assert (first.deal_id, first.company) == ("D-1", "Müller GmbH")


def test_a_semicolon_separated_file_is_recognised(tmp_path: Path) -> None:
    lines = [
        HEADER.replace(",", ";"),
        'D-1;Acme, Inc.;Ann;ann@buyer.example.org;UTC;;rfq;EUR;"Widget:2:100;Gadget:1:50"',
        ";;;;;;;;",  # Excel's trailing empty line
    ]
    rows = read_csv(write(tmp_path, codecs.BOM_UTF8 + "\r\n".join(lines).encode()))
    assert len(rows) == 1 and rows[0].problem == ""
    built = deal_from_row(settings(), rows[0].cells)
    assert built.company == "Acme, Inc." and [i.name for i in built.items] == ["Widget", "Gadget"]


def test_a_latin1_byte_refuses_its_row_and_the_others_are_read(tmp_path: Path) -> None:
    text = "\n".join([HEADER, row("D-1"), row("D-2", "Müller"), row("D-3")]) + "\n"
    rows = read_csv(write(tmp_path, text.encode("latin-1")))
    assert [(r.line, r.deal_id) for r in rows] == [(2, "D-1"), (3, "D-2"), (4, "D-3")]
    assert rows[0].problem == rows[2].problem == ""
    assert rows[1].problem.startswith(
        "not UTF-8 (byte 0xFC at position 6 of the line): save the file as"
    )


def test_an_oversized_field_or_an_unquoted_delimiter_refuses_its_row(tmp_path: Path) -> None:
    huge = "x" * 200_000  # over the csv module's own limit of 128 KiB, which tracebacked
    text = "\n".join(
        [
            HEADER,
            row("D-1"),
            row("D-2", f'"{huge}"'),
            row("D-3", "n" * (MAX_CSV_FIELD + 1)),
            row("D-4", "Acme, Inc."),
            row("D-5"),
        ]
    )
    rows = read_csv(write(tmp_path, text.encode()))
    problems = {r.deal_id: r.problem for r in rows}
    assert problems["D-1"] == problems["D-5"] == ""
    assert problems["D-2"] == "column company is 200,000 characters long; at most 8,192 in one cell"
    assert problems["D-3"].startswith("column company is 8,193 characters long")
    assert problems["D-4"] == "10 cells for 9 columns: quote a value that holds a ','"


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ((HEADER + "\n" + row("D-1")).encode("utf-16"), "is UTF-16 text"),
        ((HEADER + "\n" + (row("D-1") + "\n") * (MAX_CSV_ROWS + 1)).encode(), "more than 10,000"),
        (b"", "has no header line"),
        (b"id,name\n1,2\n", "the header has no column deal_id, company, contact_email, kind"),
        ("d\xe9al_id,company\n".encode("latin-1"), "the header line is not UTF-8"),
    ],
    ids=["utf-16", "too-many-rows", "empty", "wrong-header", "latin-1-header"],
)
def test_a_problem_of_the_whole_file_is_one_line(tmp_path: Path, content: bytes, says: str) -> None:
    with pytest.raises(BadInput) as refused:
        read_csv(write(tmp_path, content))
    assert says in str(refused.value) and "\n" not in str(refused.value)


def test_ten_thousand_rows_are_read(tmp_path: Path) -> None:
    text = HEADER + "\n" + "".join(row(f"D-{n}") + "\n" for n in range(MAX_CSV_ROWS))
    assert len(read_csv(write(tmp_path, text.encode()))) == MAX_CSV_ROWS


# --- the workflow's arithmetic never raises ---


@pytest.mark.parametrize("quantity", ["1e30", "1e900000", "1e-900000"])
def test_pricing_never_raises_whatever_the_quantity(quantity: str) -> None:
    items = [LineItem(name="W", quantity=Decimal(quantity), list_price=Decimal("100.50"))]
    total = pricing.list_total(items)
    assert Decimal(0) <= total <= pricing.CEILING
    assert pricing.floor_total(items, Decimal(10)) <= total
    pricing.max_discount_percent(items, Decimal(10))
    pricing.discount_refusal(items, Decimal(10), Decimal("99.99"))


def test_bounded_totals_are_exact() -> None:
    most = LineItem(name="W", quantity=Decimal("999999.9999"), list_price=Decimal("999999.99"))
    expected = (Decimal("999999.9999") * Decimal("999999.99")).quantize(Decimal("0.01"))
    assert pricing.list_total([most]) == expected


SENT = datetime(2026, 11, 26, 14, tzinfo=UTC)
ALWAYS = BusinessCalendar(window={"days": list(range(7)), "start": "00:00", "end": "23:59"})


def test_a_delivery_date_of_9999_12_31_saturates_instead_of_overflowing() -> None:
    ordered = Schedule(
        stage=Stage.ORDER_CONFIRMED, touches=0, anchor=SENT, delivery_date=date(9999, 12, 31)
    )
    step = next_step(ordered, Cadence(), ALWAYS, ShiftPolicy.SHIFT)
    assert step is not None and (step.action, step.at) == (Action.CONFIRM_DELIVERY, HORIZON)


def test_absurd_delays_saturate_at_the_horizon() -> None:
    cadence = Cadence(
        proposal=[BusinessDays(business_days=10**12)],
        no_response_after=timedelta(days=999_999_999),
        delivery_overdue_after=timedelta(days=999_999_999),
    )
    start = Schedule(stage=Stage.PROPOSAL_RECEIVED, touches=0, anchor=SENT)
    steps = upcoming(start, cadence, ALWAYS, ShiftPolicy.ANCHOR)
    assert [(s.action, s.at) for s in steps] == [
        (Action.FOLLOW_UP, HORIZON),
        (Action.NO_RESPONSE, HORIZON),
    ]
    held = Schedule(
        stage=Stage.PROPOSAL_RECEIVED, touches=0, anchor=SENT, held_until=datetime.max.replace(
            tzinfo=UTC
        ),
    )  # fmt: skip
    assert next_step(held, Cadence(), ALWAYS, ShiftPolicy.SHIFT).at == HORIZON  # type: ignore[union-attr]
    order = Schedule(
        stage=Stage.ORDER_PLACED, touches=0, anchor=SENT, delivery_date=date(2027, 1, 1)
    )
    assert next_step(order, cadence, ALWAYS, ShiftPolicy.SHIFT).at == HORIZON  # type: ignore[union-attr]


def test_a_payload_is_checked_field_by_field() -> None:
    day = date(2027, 1, 15)
    bounds.check_payload(OrderPlaced(delivery_date=date(2036, 1, 15), note="line\none"), day)
    with pytest.raises(ValueError, match="delivery_date 2037-01-16 is after 2037-01-15"):
        bounds.check_payload(OrderPlaced(delivery_date=date(2037, 1, 16)), day)
    with pytest.raises(ValueError, match="purchase_order holds a carriage return"):
        bounds.check_payload(OrderPlaced(delivery_date=day, purchase_order="PO\r\n1"), day)
    with pytest.raises(ValueError, match=r"note holds a carriage return \(U\+000D\)"):
        bounds.check_payload(OrderPlaced(delivery_date=day, note="a\rb"), day)
    assert bounds.latest(date(2028, 2, 29)) == date(2038, 2, 28)
