"""Turning what ops type (flags, a deal file, a CSV file) into a checked ``DealInput``.

Everything a workflow cannot check for itself is checked here, before a deal
starts: the time zone exists, addresses are well formed, line items parse, the
currency is an ISO 4217 code, and every value is inside its bound
(``workflows/bounds.py``: lengths, control characters, quantities, totals, dates).
Settings fill in what the deal leaves out (owner, fulfilment, cadence).
"""

from __future__ import annotations

import codecs
import csv
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import holidays
import pycountry
from pydantic import ValidationError

from settings import Settings
from workflows import bounds
from workflows.business_calendar import BusinessCalendar, SendWindow
from workflows.models import REVISION, DealInput, LineItem

CSV_COLUMNS = (
    "deal_id",
    "company",
    "contact_name",
    "contact_email",
    "time_zone",
    "owner",
    "kind",
    "currency",
    "items",
)


# A CSV file for bulk-start (README: "Starting many deals").
MAX_CSV_ROWS = 10_000
MAX_CSV_FIELD = 8 * 1024  # characters in one cell
MAX_CSV_BYTES = 64 * 1024 * 1024
MAX_DEAL_FILE_BYTES = 1024 * 1024
REQUIRED_COLUMNS = ("deal_id", "company", "contact_email", "kind")
SAVE_AS_UTF8 = "save the file as 'CSV UTF-8' (Excel: File > Save As > CSV UTF-8)"


class BadInput(ValueError):
    """Input that cannot become a deal or a signal; the message says what to fix."""


def explain(error: ValidationError) -> str:
    """One line for the first problem pydantic found, naming the field."""
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "input"
    return f"{where}: {first['msg'].removeprefix('Value error, ')}"


def today() -> date:
    return datetime.now(UTC).date()


def check_currency(code: str) -> str:
    """An ISO 4217 code, from the pycountry package's list (Debian's iso-codes)."""
    if pycountry.currencies.get(alpha_3=code) is None:
        raise BadInput(f"currency {code!r} is not an ISO 4217 code such as EUR, USD or GBP")
    return code


def check_deal(deal: DealInput, now: date | None = None) -> None:
    """Every field of a deal inside its bound (workflows/bounds.py); BadInput names the first."""
    try:
        bounds.check_deal(deal, now or today())
    except ValueError as error:
        raise BadInput(str(error)) from None
    check_currency(deal.currency)


def check_time_zone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise BadInput(
            f"unknown time zone {name!r}: use an IANA name such as Europe/Berlin"
        ) from None
    return name


def parse_item(text: str) -> LineItem:
    """``NAME:QUANTITY:LIST_PRICE[:FLOOR_PRICE]``, e.g. ``Widget:10:120.00:100``."""
    parts = [part.strip() for part in text.split(":")]
    if len(parts) not in (3, 4):
        raise BadInput(f"item {text!r} should be NAME:QUANTITY:LIST_PRICE[:FLOOR_PRICE]")
    fields: dict[str, Any] = {"name": parts[0], "quantity": parts[1], "list_price": parts[2]}
    if len(parts) == 4:
        fields["floor_price"] = parts[3]
    try:
        return LineItem.model_validate(fields)
    except ValidationError as error:
        raise BadInput(f"item {text!r}: {explain(error)}") from None


def parse_items(texts: Iterable[str]) -> list[LineItem]:
    return [parse_item(text) for text in texts if text.strip()]


def parse_contact(text: str, time_zone: str) -> dict[str, str]:
    """``Name <email>`` or a bare address."""
    match = re.fullmatch(r"\s*(.*?)\s*<([^>]+)>\s*", text)
    name, email = (match.group(1), match.group(2)) if match else ("", text.strip())
    return {"name": name or email.split("@")[0], "email": email, "time_zone": time_zone}


def build_deal(settings: Settings, fields: Mapping[str, Any]) -> DealInput:
    """A complete deal from partial fields, with the settings' defaults filled in."""
    data = dict(fields)
    overrides = data.pop("cadence", None) or {}
    base = settings.default_cadence.model_dump()
    data["cadence"] = {**base, **overrides}
    data.setdefault("owner", str(settings.rep_address))
    data.setdefault("fulfilment_address", str(settings.fulfilment_address))
    if settings.win_loss_interviewer:
        data.setdefault("win_loss_interviewer", str(settings.win_loss_interviewer))
    if "message_domain" not in data:
        try:
            data["message_domain"] = bounds.ascii_domain("sender domain", settings.sender_domain)
        except ValueError as error:
            raise BadInput(str(error)) from None
    data.setdefault("send_retry_for", settings.send_retry_for)
    data.setdefault("resend_window", settings.resend_window)
    data.setdefault("shift_policy", settings.shift_policy.value)
    if settings.send_rate_per_second:
        data.setdefault("send_task_queue", settings.send_task_queue)
    data.setdefault("routing", template_routing(settings.templates_dir))
    # The engine's, not the deal file's: the code the deal runs under.
    data["revision"] = REVISION
    for contact in data.get("contacts") or []:
        if isinstance(contact, Mapping) and contact.get("time_zone"):
            check_time_zone(str(contact["time_zone"]))
    try:
        deal = DealInput.model_validate(data)
    except ValidationError as error:
        raise BadInput(explain(error)) from None
    if "calendar" not in data and settings.window is not None:
        deal.calendar = business_calendar(settings, deal.buyer.time_zone, deal.buyer.country)
    check_deal(deal)
    return deal


def template_routing(folder: Path) -> dict[str, list[str]]:
    """Which buying-committee roles each template targets (``<step>/roles.txt``, one a line)."""
    routing = {}
    for roles_file in sorted(folder.glob("*/roles.txt")):
        roles = [line.strip() for line in roles_file.read_text().splitlines() if line.strip()]
        routing[roles_file.parent.name] = roles
    return routing


def business_calendar(
    settings: Settings, time_zone: str, country: str | None, years: int = 3
) -> BusinessCalendar:
    """The buyer's calendar: the settings' window and the country's public holidays.

    Holidays are resolved here, once, and travel in the deal's input: a workflow
    must not depend on a holiday library whose next release could change its replay.
    """
    dates = set(settings.extra_holidays)
    country = country or settings.holiday_country
    if country:
        this_year = datetime.now().year
        try:
            found = holidays.country_holidays(country, years=range(this_year, this_year + years))
        except NotImplementedError:
            raise BadInput(
                f"no holiday calendar for country {country!r}: use an ISO code such as DE"
            ) from None
        dates.update(found.keys())
    return BusinessCalendar(
        time_zone=time_zone, window=settings.window or SendWindow(), holidays=sorted(dates)
    )


def read_deal_file(path: Path) -> dict[str, Any]:
    """A JSON deal file: UTF-8 (a BOM is fine), at most 1 MiB, one object."""
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_DEAL_FILE_BYTES + 1)
    except OSError as error:
        raise BadInput(f"cannot read {path}: {error.strerror}") from None
    if len(raw) > MAX_DEAL_FILE_BYTES:
        raise BadInput(f"{path} is over {MAX_DEAL_FILE_BYTES // 1024} KiB; a deal file is smaller")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise BadInput(
            f"{path} is not UTF-8 (byte 0x{raw[error.start]:02X} at offset {error.start}): "
            "save it as UTF-8"
        ) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise BadInput(f"{path} is not valid JSON: {error.msg} at line {error.lineno}") from None
    except (ValueError, RecursionError) as error:  # a 5,000-digit number; nesting too deep
        reason = "nested too deeply" if isinstance(error, RecursionError) else str(error)
        raise BadInput(f"{path} is not a deal file: {reason}") from None
    if not isinstance(data, dict):
        raise BadInput(f"{path} should hold one JSON object describing the deal")
    return data


def deal_from_row(settings: Settings, row: Mapping[str, str | None]) -> DealInput:
    """One CSV row (columns: ``CSV_COLUMNS``; ``items`` separated by ``;``)."""
    missing = [
        column for column in ("deal_id", "company", "contact_email", "kind") if not row.get(column)
    ]
    if missing:
        raise BadInput(f"missing column value(s): {', '.join(missing)}")
    time_zone = check_time_zone((row.get("time_zone") or "UTC").strip())
    fields: dict[str, Any] = {
        "deal_id": (row.get("deal_id") or "").strip(),
        "company": (row.get("company") or "").strip(),
        "kind": (row.get("kind") or "").strip().lower(),
        "contacts": [
            {
                "name": (row.get("contact_name") or "").strip()
                or str(row.get("contact_email")).split("@")[0],
                "email": (row.get("contact_email") or "").strip(),
                "time_zone": time_zone,
            }
        ],
        "items": parse_items((row.get("items") or "").split(";")),
    }
    if row.get("owner"):
        fields["owner"] = str(row["owner"]).strip()
    if row.get("currency"):
        fields["currency"] = str(row["currency"]).strip().upper()
    return build_deal(settings, fields)


@dataclass
class CsvRow:
    """One record of a CSV file: its first line, its cells by column, and why it cannot be
    read, when it cannot (then it starts no deal, and the other rows still do)."""

    line: int
    cells: dict[str, str | None]
    problem: str = ""

    @property
    def deal_id(self) -> str:
        return (self.cells.get("deal_id") or "").strip()[:64]


@contextmanager
def _field_size_limit(limit: int) -> Iterator[None]:
    # The csv module's own limit (128 KiB) raises mid-file; cells are measured here instead.
    before = csv.field_size_limit(max(limit, csv.field_size_limit()))
    try:
        yield
    finally:
        csv.field_size_limit(before)


def _delimiter(header: str) -> str:
    """Comma, semicolon (Excel where the decimal mark is a comma) or tab: whichever splits
    the header into the most known column names."""

    def known(delimiter: str) -> int:
        names = next(csv.reader([header], delimiter=delimiter), [])
        return sum(name.strip().lower() in CSV_COLUMNS for name in names)

    return max((",", ";", "\t"), key=known)


def read_csv(path: Path) -> list[CsvRow]:
    """The rows of a bulk-start CSV file.

    UTF-8, with or without a BOM (Excel's "CSV UTF-8"); comma-, semicolon- or
    tab-separated, read from the header. A problem with the whole file (unreadable,
    UTF-16, no header, over 10,000 rows) raises BadInput; a problem with one row (a byte
    that is not UTF-8, a cell over 8 KiB, more cells than columns) is that row's
    ``problem``, and the other rows are read all the same.
    """
    try:
        if path.stat().st_size > MAX_CSV_BYTES:
            raise BadInput(
                f"{path} is over {MAX_CSV_BYTES // (1024 * 1024)} MiB: split it into smaller files"
            )
        data = path.read_bytes()
    except OSError as error:
        raise BadInput(f"cannot read {path}: {error.strerror}") from None
    if data.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        raise BadInput(f"{path} is UTF-32 text: {SAVE_AS_UTF8}")
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise BadInput(f"{path} is UTF-16 text (Excel's 'Unicode Text'): {SAVE_AS_UTF8}")
    data = data.removeprefix(codecs.BOM_UTF8)
    texts, undecodable = [], {}
    # bytes.splitlines breaks at \n, \r and \r\n only, as the csv module does.
    for number, raw in enumerate(data.splitlines(keepends=True), start=1):
        try:
            texts.append(raw.decode("utf-8"))
        except UnicodeDecodeError as error:
            byte, where = raw[error.start], error.start + 1
            undecodable[number] = (
                f"not UTF-8 (byte 0x{byte:02X} at position {where} of the line): {SAVE_AS_UTF8}"
            )
            texts.append(raw.decode("utf-8", errors="replace"))
    if not texts or not texts[0].strip():
        raise BadInput(f"{path} has no header line: the first line names the columns")
    if 1 in undecodable:
        raise BadInput(f"{path}: the header line is {undecodable[1]}")
    if "\0" in texts[0]:
        raise BadInput(f"{path}: the header line holds NUL bytes (UTF-16?): {SAVE_AS_UTF8}")
    delimiter = _delimiter(texts[0])
    with _field_size_limit(len(data) + 1):
        reader = csv.reader(texts, delimiter=delimiter)
        header = [name.strip().lower() for name in next(reader)]
        missing = [column for column in REQUIRED_COLUMNS if column not in header]
        if missing:
            raise BadInput(
                f"{path}: the header has no column {', '.join(missing)}; "
                f"the columns are {', '.join(CSV_COLUMNS)}"
            )
        return list(_records(path, reader, header, delimiter, undecodable, reader.line_num))


def _records(
    path: Path,
    reader: Iterator[list[str]],
    header: list[str],
    delimiter: str,
    undecodable: dict[int, str],
    last: int,
) -> Iterator[CsvRow]:
    """The records after the header, which ended on line ``last``."""
    count = 0
    while True:
        first = last + 1
        try:
            cells = next(reader)
            problem = ""
        except StopIteration:
            return
        except csv.Error as error:
            cells, problem = [], f"not CSV: {error}"
        last = reader.line_num  # type: ignore[attr-defined]
        if not problem and not any(cell.strip() for cell in cells):
            continue  # a blank line, or one of Excel's trailing ';;;;' lines
        count += 1
        if count > MAX_CSV_ROWS:
            raise BadInput(
                f"{path} has more than {MAX_CSV_ROWS:,} rows: split it into files of at most "
                f"{MAX_CSV_ROWS:,} deals"
            )
        row = dict(zip(header, cells, strict=False))
        problem = problem or next(
            (undecodable[line] for line in range(first, last + 1) if line in undecodable), ""
        )
        extra = cells[len(header) :]
        if not problem and any(cell.strip() for cell in extra):
            shown = "tab" if delimiter == "\t" else f"'{delimiter}'"
            problem = (
                f"{len(cells)} cells for {len(header)} columns: quote a value that holds a {shown}"
            )
        long = next((name for name, cell in row.items() if len(cell) > MAX_CSV_FIELD), None)
        if not problem and long is not None:
            problem = (
                f"column {long} is {len(row[long]):,} characters long; "
                f"at most {MAX_CSV_FIELD:,} in one cell"
            )
        cells_by_column: dict[str, str | None] = {name: None for name in header}
        cells_by_column.update(row)
        yield CsvRow(first, cells_by_column, problem)


def local_moment(text: str, time_zone: str, default_time: time = time(9)) -> datetime:
    """An ISO date or date-time; a bare date or naive time is read in the buyer's zone.
    Between 2000-01-01 and ten years from today (workflows/bounds.py)."""
    zone = ZoneInfo(check_time_zone(time_zone))
    try:
        if len(text) == 10:
            moment = datetime.combine(date.fromisoformat(text), default_time, zone)
        else:
            moment = datetime.fromisoformat(text)
    except ValueError:
        raise BadInput(f"{text!r} is not an ISO date (2026-12-01) or date-time") from None
    moment = moment if moment.tzinfo else moment.replace(tzinfo=zone)
    try:
        bounds.check_moment("the date", moment, today())
    except ValueError as error:
        raise BadInput(str(error)) from None
    return moment


def parse_date(text: str) -> date:
    """An ISO date between 2000-01-01 and ten years from today."""
    try:
        day = date.fromisoformat(text)
    except ValueError:
        raise BadInput(f"{text!r} is not an ISO date such as 2026-12-01") from None
    try:
        bounds.check_date("the date", day, today())
    except ValueError as error:
        raise BadInput(str(error)) from None
    return day
