"""Turning what ops type (flags, a deal file, a CSV row) into a checked ``DealInput``.

Everything a workflow cannot check for itself is checked here, before a deal
starts: the time zone exists, addresses are well formed, line items parse.
Settings fill in what the deal leaves out (owner, fulfilment, cadence).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from datetime import date, datetime, time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import holidays
from pydantic import ValidationError

from settings import Settings
from workflows.business_calendar import BusinessCalendar, SendWindow
from workflows.models import DealInput, LineItem

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


class BadInput(ValueError):
    """Input that cannot become a deal or a signal; the message says what to fix."""


def explain(error: ValidationError) -> str:
    """One line for the first problem pydantic found, naming the field."""
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "input"
    return f"{where}: {first['msg'].removeprefix('Value error, ')}"


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
    data.setdefault("message_domain", settings.sender_domain)
    data.setdefault("send_retry_for", settings.send_retry_for)
    data.setdefault("shift_policy", settings.shift_policy.value)
    if settings.send_rate_per_second:
        data.setdefault("send_task_queue", settings.send_task_queue)
    data.setdefault("routing", template_routing(settings.templates_dir))
    for contact in data.get("contacts") or []:
        if isinstance(contact, Mapping) and contact.get("time_zone"):
            check_time_zone(str(contact["time_zone"]))
    try:
        deal = DealInput.model_validate(data)
    except ValidationError as error:
        raise BadInput(explain(error)) from None
    if "calendar" not in data and settings.window is not None:
        deal.calendar = business_calendar(settings, deal.buyer.time_zone, deal.buyer.country)
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
    try:
        data = json.loads(path.read_text())
    except OSError as error:
        raise BadInput(f"cannot read {path}: {error.strerror}") from None
    except json.JSONDecodeError as error:
        raise BadInput(f"{path} is not valid JSON: {error.msg} at line {error.lineno}") from None
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


def local_moment(text: str, time_zone: str, default_time: time = time(9)) -> datetime:
    """An ISO date or date-time; a bare date or naive time is read in the buyer's zone."""
    zone = ZoneInfo(check_time_zone(time_zone))
    try:
        if len(text) == 10:
            return datetime.combine(date.fromisoformat(text), default_time, zone)
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise BadInput(f"{text!r} is not an ISO date (2026-12-01) or date-time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=zone)


def parse_date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise BadInput(f"{text!r} is not an ISO date such as 2026-12-01") from None
