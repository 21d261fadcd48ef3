"""The dashboard's filter form (``?since=&until=&owner=&kind=``) as a report filter.

Dates are days in UTC, as ``starter.py report --since/--until`` takes them: deals created
on or after ``since`` and before ``until`` (``since=2026-01-01&until=2026-04-01`` is the
first quarter). A bad value is answered with one line saying what to write instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time

from ledger.reports import ReportFilter
from workflows import bounds

KINDS = ("rfi", "rfp", "rfq")


class BadFilter(ValueError):
    """A filter value the page cannot use; the message says what to write."""


@dataclass(frozen=True)
class FilterForm:
    """What the form shows again (as typed) and the filter it means."""

    since: str
    until: str
    owner: str
    kind: str
    report: ReportFilter


def _day(name: str, text: str) -> date | None:
    if not text:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise BadFilter(f"{name}: {text[:40]!r} is not a date; write it as YYYY-MM-DD") from None


def _start_of(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=UTC)


def parse(query: Mapping[str, str]) -> FilterForm:
    since_text = query.get("since", "").strip()
    until_text = query.get("until", "").strip()
    owner = query.get("owner", "").strip()
    kind = query.get("kind", "").strip().lower()
    since = _day("since", since_text)
    until = _day("until", until_text)
    if since is not None and until is not None and until <= since:
        raise BadFilter(f"until ({until}) is not after since ({since}); give a later until")
    if kind and kind not in KINDS:
        raise BadFilter(f"kind: {kind[:10]!r} is not a kind of inquiry; use rfi, rfp or rfq")
    if len(owner) > bounds.MAX_ADDRESS:
        raise BadFilter(f"owner: longer than {bounds.MAX_ADDRESS} characters; give a rep's email")
    report = ReportFilter(
        since=_start_of(since) if since else None,
        until=_start_of(until) if until else None,
        owner=owner or None,
        kind=kind or None,
    )
    return FilterForm(since=since_text, until=until_text, owner=owner, kind=kind, report=report)
