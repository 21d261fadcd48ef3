import subprocess
import sys
from pathlib import Path

import pytest

from deal_intake import BadInput, build_deal, deal_from_row, local_moment, parse_item
from settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]


def settings() -> Settings:
    return load_settings(_env_file=None)


def run_with_env(**env: str) -> subprocess.CompletedProcess[str]:
    code = "import settings; settings.load_settings()"
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={"PATH": "/usr/bin", **env},
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"DEALFLOW_SMTP_PORT": "abc"}, "DEALFLOW_SMTP_PORT"),
        ({"DEALFLOW_SENDER_ADDRESS": "not-an-address"}, "DEALFLOW_SENDER_ADDRESS"),
        ({"DEALFLOW_CADENCE__PROPOSAL": '["P2D", "soon"]'}, "DEALFLOW_CADENCE__PROPOSAL"),
        ({"DEALFLOW_SMTP_HOST": "smtp.example.com"}, "DEALFLOW_SMTP_TLS"),
    ],
)
def test_invalid_setting_stops_with_one_line_naming_the_variable(
    env: dict[str, str], variable: str
) -> None:
    result = run_with_env(**env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and variable in lines[0], result.stderr


def test_cadence_fields_can_be_overridden_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DEALFLOW_CADENCE__PROPOSAL", '["P1D", "PT36H"]')
    monkeypatch.setenv("DEALFLOW_CADENCE__WIN_LOSS_AFTER", "P28D")
    cadence = settings().default_cadence
    assert [d.total_seconds() / 3600 for d in cadence.proposal] == [24, 36]
    assert cadence.win_loss_after.days == 28


def test_unknown_time_zone_is_refused() -> None:
    fields = {
        "deal_id": "D-1",
        "company": "X",
        "kind": "rfi",
        "contacts": [{"name": "A", "email": "a@example.org", "time_zone": "Mars/Base"}],
    }
    with pytest.raises(BadInput, match="unknown time zone 'Mars/Base'"):
        build_deal(settings(), fields)


def test_malformed_email_is_refused_naming_the_field() -> None:
    fields = {
        "deal_id": "D-1",
        "company": "X",
        "kind": "rfi",
        "contacts": [{"name": "A", "email": "a@@example", "time_zone": "UTC"}],
    }
    with pytest.raises(BadInput, match=r"contacts\.0\.email"):
        build_deal(settings(), fields)


def test_priced_inquiries_need_line_items() -> None:
    fields = {
        "deal_id": "D-1",
        "company": "X",
        "kind": "rfp",
        "contacts": [{"name": "A", "email": "a@example.org"}],
    }
    with pytest.raises(BadInput, match="at least one line item"):
        build_deal(settings(), fields)


def test_item_floor_above_list_price_is_refused() -> None:
    with pytest.raises(BadInput, match="above the list price"):
        parse_item("Widget:1:100:120")


def test_csv_row_becomes_a_deal_with_settings_defaults() -> None:
    row = {
        "deal_id": "D-7",
        "company": "Acme",
        "contact_name": "",
        "contact_email": "jo@acme.example.com",
        "time_zone": "America/New_York",
        "owner": "",
        "kind": "RFQ",
        "currency": "usd",
        "items": "Widget:2:100; Gadget:1:50:45",
    }
    deal = deal_from_row(settings(), row)
    assert deal.kind.value == "rfq" and deal.currency == "USD"
    assert [i.name for i in deal.items] == ["Widget", "Gadget"]
    assert deal.owner == settings().rep_address
    assert deal.contacts[0].name == "jo"


def test_a_bare_next_step_date_means_nine_in_the_morning_buyer_local() -> None:
    moment = local_moment("2026-12-01", "America/New_York")
    assert moment.isoformat() == "2026-12-01T09:00:00-05:00"


def test_relay_and_mailbox_passwords_never_show_in_a_repr() -> None:
    """Endpoints end up in log lines and tracebacks; their passwords must not."""
    from activities.mailbox import ImapEndpoint
    from activities.smtp_pool import SmtpEndpoint

    smtp = SmtpEndpoint("smtp.example.com", 587, "starttls", "sales", "hunter2-smtp")
    imap = ImapEndpoint("imap.example.com", 993, "implicit", "sales", "hunter2-imap")
    for endpoint, secret in ((smtp, "hunter2-smtp"), (imap, "hunter2-imap")):
        assert secret not in repr(endpoint) and secret not in str(endpoint)
        assert "sales" in repr(endpoint)  # the rest stays readable
        assert endpoint.password == secret
