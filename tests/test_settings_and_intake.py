import subprocess
import sys
from pathlib import Path

import pytest

from deal_intake import BadInput, build_deal, deal_from_row, local_moment, parse_item
from settings import Settings, load_settings
from workflows.models import REVISION

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
        ({"DEALFLOW_TEMPORAL_TASK_QUEUE": "deals queue"}, "DEALFLOW_TEMPORAL_TASK_QUEUE"),
        ({"DEALFLOW_SEND_RETRY_FOR": "-PT1H"}, "DEALFLOW_SEND_RETRY_FOR"),
        ({"DEALFLOW_RESEND_WINDOW": "P365D"}, "DEALFLOW_RESEND_WINDOW"),
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


@pytest.mark.parametrize("given", [None, 0, 7])
def test_intake_starts_every_deal_at_the_current_revision(given: int | None) -> None:
    """The revision is the code's, not the deal file's: a file cannot opt a deal into an
    older path (nor a future one)."""
    fields = {
        "deal_id": "D-1",
        "company": "X",
        "kind": "rfi",
        "contacts": [{"name": "A", "email": "a@example.org"}],
        **({} if given is None else {"revision": given}),
    }
    assert build_deal(settings(), fields).revision == REVISION == 1


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


# --- secrets (issue "Safe with real buyers", part 6) ---

LONG_SECRET = "s3cr3t-" + "x" * 40


SECRETS = ["DEALFLOW_SIGNING_SECRET", "DEALFLOW_WEBHOOK_SECRET", "DEALFLOW_CODEC_SERVER_TOKEN"]


@pytest.mark.parametrize("variable", SECRETS)
@pytest.mark.parametrize(
    "value", ["", "short-secret", "compose-demo-only-set-your-own", "test-signing-secret"]
)
def test_a_short_empty_or_demo_secret_is_refused_in_one_line_saying_how_to_make_one(
    variable: str, value: str
) -> None:
    result = run_with_env(**{variable: value})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert variable in lines[0] and "openssl rand -base64 32" in lines[0]
    if value:
        assert value not in result.stderr


def test_secrets_of_32_bytes_are_accepted() -> None:
    loaded = load_settings(
        _env_file=None,
        signing_secret=LONG_SECRET,
        webhook_secret=LONG_SECRET,
        codec_server_token=LONG_SECRET,
    )
    assert loaded.signing_key() == LONG_SECRET


def test_dev_accepts_short_and_demo_secrets_but_not_an_empty_one() -> None:
    dev = load_settings(_env_file=None, dev=True, signing_secret="test-signing-secret")
    assert dev.signing_key() == "test-signing-secret"
    result = run_with_env(DEALFLOW_DEV="true", DEALFLOW_WEBHOOK_SECRET="")
    assert result.returncode == 2 and "DEALFLOW_WEBHOOK_SECRET is empty" in result.stderr


def test_dev_is_refused_with_a_public_url_off_this_machine() -> None:
    result = run_with_env(DEALFLOW_DEV="true", DEALFLOW_PUBLIC_URL="https://deals.example.com")
    assert result.returncode == 2
    assert "DEALFLOW_DEV" in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("url", "accepted"),
    [
        ("https://deals.example.com", True),
        ("http://localhost:8080", True),
        ("http://127.0.0.1:8081", True),
        ("http://deals.example.com", False),
        ("http://10.0.0.5:8080", False),
        ("deals.example.com", False),
    ],
)
def test_the_public_url_must_be_https_off_this_machine(url: str, accepted: bool) -> None:
    result = run_with_env(DEALFLOW_PUBLIC_URL=url)
    assert (result.returncode == 0) is accepted, result.stderr
    if not accepted:
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "DEALFLOW_PUBLIC_URL" in lines[0]


def start_worker(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``python worker.py`` as production starts it (no ``--dev``) on an empty ledger: a
    worker past its settings stops at the ledger's schema check, so nothing else runs."""
    return subprocess.run(
        [sys.executable, str(ROOT / "worker.py")],
        cwd=tmp_path,
        env={"PATH": "/usr/bin", "DEALFLOW_DATA_DIR": str(tmp_path), **env},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


PAST_THE_SETTINGS = "worker: the ledger schema is at nothing"


def test_a_worker_outside_dev_refuses_to_start_without_a_public_url(tmp_path: Path) -> None:
    # The default (http://localhost:8080) would put this machine in every unsubscribe link.
    result = start_worker(tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("worker: DEALFLOW_PUBLIC_URL is not set: set it to the https://")


@pytest.mark.parametrize(
    "env",
    [
        {"DEALFLOW_PUBLIC_URL": "https://deals.example.com"},
        # Set on purpose, a loopback URL is for local testing (its links reach this machine).
        {"DEALFLOW_PUBLIC_URL": "http://127.0.0.1:8081"},
        {"DEALFLOW_DEV": "true"},
    ],
)
def test_a_worker_starts_with_an_https_or_explicit_loopback_public_url_or_in_dev(
    tmp_path: Path, env: dict[str, str]
) -> None:
    result = start_worker(tmp_path, **env)
    assert result.stderr.startswith(PAST_THE_SETTINGS), result.stderr


def test_a_worker_refuses_an_http_public_url_off_this_machine(tmp_path: Path) -> None:
    result = start_worker(tmp_path, DEALFLOW_PUBLIC_URL="http://deals.example.com")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == [
        "dealflow: invalid setting: DEALFLOW_PUBLIC_URL must be https:// (the unsubscribe "
        "links carry signed tokens); put the endpoints behind a TLS proxy"
    ]


KEY_A = "Y2FuYXJ5LWtleS1hLWNhbmFyeS1rZXktYS0xMjM0NTY="  # 32 bytes
KEY_B = "Y2FuYXJ5LWtleS1iLWNhbmFyeS1rZXktYi0xMjM0NTY="  # 32 bytes


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("", "is empty"),
        ("no-equals-sign", "ID=BASE64KEY"),
        (f"bad id={KEY_A}", "ID=BASE64KEY"),
        ("k1=not*base64", "not base64"),
        ("k1=c2hvcnQta2V5", "is 9 bytes, AES-256 needs 32"),
        (f"k1={KEY_A},k1={KEY_B}", "appears twice"),
        ("demo=dGVzdC1rZXktdGVzdC1rZXktdGVzdC1rZXktdGVzdCE=", "published demo key"),
    ],
)
def test_a_bad_codec_key_list_is_refused_in_one_line_without_the_key(value: str, says: str) -> None:
    result = run_with_env(DEALFLOW_CODEC_KEYS=value)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "DEALFLOW_CODEC_KEYS" in lines[0] and says in lines[0], lines
    for key in (KEY_A, KEY_B, "c2hvcnQta2V5"):
        assert key not in result.stderr


def test_codec_keys_the_first_encrypts_the_others_decrypt() -> None:
    loaded = load_settings(_env_file=None, codec_keys=f"new={KEY_A}, old={KEY_B}")
    ring = loaded.codec_key_ring()
    assert [key_id for key_id, _ in ring] == ["new", "old"]
    assert all(len(key) == 32 for _, key in ring)


def test_unset_codec_key_is_made_once_and_kept_in_the_data_dir(tmp_path: Path) -> None:
    first = load_settings(_env_file=None, data_dir=tmp_path).codec_key_ring()
    again = load_settings(_env_file=None, data_dir=tmp_path).codec_key_ring()
    assert first == again and len(first) == 1 and len(first[0][1]) == 32
    assert (tmp_path / "codec-keys").stat().st_mode & 0o777 == 0o600
    assert list(tmp_path.iterdir()) == [tmp_path / "codec-keys"]  # no scratch file left


def test_no_secret_shows_in_the_settings_repr_dump_or_a_refusal() -> None:
    canaries = {
        "signing_secret": "CANARY-signing-" + "s" * 32,
        "webhook_secret": "CANARY-webhook-" + "w" * 32,
        "codec_server_token": "CANARY-token-" + "t" * 32,
        "smtp_password": "CANARY-smtp-password",
        "temporal_api_key": "CANARY-api-key",
        "database_url": "postgresql://dealflow:CANARY-db-password@db.example.com/dealflow",
        "codec_keys": f"k1={KEY_A}",
    }
    loaded = load_settings(_env_file=None, smtp_username="sales", **canaries)
    shown = repr(loaded) + str(loaded) + loaded.model_dump_json() + str(loaded.model_dump())
    for secret in [*canaries.values(), "CANARY-db-password", KEY_A]:
        assert secret not in shown
    # A refused setting's error (printed by whoever builds Settings directly) keeps the
    # input out too.
    with pytest.raises(ValueError) as refused:
        Settings(_env_file=None, signing_secret="CANARY-too-short")  # type: ignore[call-arg]
    assert "CANARY-too-short" not in str(refused.value) + repr(refused.value)


async def test_a_ledger_error_never_shows_the_database_password() -> None:
    from devstack import free_port
    from ledger import schema
    from ledger.database import LedgerDatabase, LedgerProblem

    password = "CANARY-ledger-password-" + "p" * 16
    url = f"postgresql://dealflow:{password}@127.0.0.1:{free_port()}/dealflow"
    database = LedgerDatabase(url)
    try:
        with pytest.raises(LedgerProblem) as refused:
            await schema.check(database)
    finally:
        await database.dispose()
    assert "127.0.0.1" in str(refused.value)
    assert password not in str(refused.value) + repr(refused.value)
    assert password not in repr(load_settings(_env_file=None, database_url=url))
