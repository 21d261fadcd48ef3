"""Every knob of Dealflow, read from the environment (prefix ``DEALFLOW_``) or ``.env``.

Read by the worker, the starter and the activities; never by a workflow, which
gets what it needs in its input (a workflow reading the environment would not
replay deterministically).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import re
import secrets
import sys
from datetime import date, time, timedelta
from decimal import Decimal
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from pydantic import EmailStr, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from workflows import bounds
from workflows.business_calendar import SendWindow
from workflows.models import Cadence, ShiftPolicy

if TYPE_CHECKING:
    from activities.signed_tokens import TokenSigner

ENV_PREFIX = "DEALFLOW_"
TASK_QUEUE = "dealflow"


class SmtpTls(StrEnum):
    STARTTLS = "starttls"
    IMPLICIT = "implicit"
    NONE = "none"


class ImapTls(StrEnum):
    IMPLICIT = "implicit"
    NONE = "none"


class CadenceProfile(StrEnum):
    STANDARD = "standard"
    DEMO = "demo"


def demo_cadence() -> Cadence:
    """Seconds instead of days, so the README walkthrough shows a whole deal in minutes."""
    s = timedelta(seconds=1)
    return Cadence(
        inquiry=[20 * s, 20 * s],
        proposal=[30 * s, 30 * s],
        quote=[30 * s, 30 * s],
        offer=[30 * s, 30 * s],
        win_loss=[30 * s],
        no_response_after=60 * s,
        delivery_overdue_after=60 * s,
        check_in_after=15 * s,
        win_loss_after=30 * s,
        win_loss_min_order_value=Decimal(1000),
    )


DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def parse_window(text: str) -> SendWindow | None:
    """``mon-fri 09:00-17:00``, ``mon,wed,fri 08:30-12:00`` or ``always``."""
    text = text.strip().lower()
    if text == "always":
        return None
    try:
        days_text, hours_text = text.split()
        days: list[int] = []
        for part in days_text.split(","):
            first, _, last = part.partition("-")
            start, end = DAY_NAMES.index(first), DAY_NAMES.index(last or first)
            days.extend(range(start, end + 1))
        opens, closes = (time.fromisoformat(t) for t in hours_text.split("-"))
        return SendWindow(days=sorted(set(days)), start=opens, end=closes)
    except ValueError:
        raise ValueError(
            "DEALFLOW_SEND_WINDOW should look like 'mon-fri 09:00-17:00' or 'always'"
        ) from None


def _json_or_text(value: object) -> object:
    # Nested env values arrive as text; lists of delays are written as JSON.
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


# Secrets shorter than this are refused (outside dev): 32 bytes of randomness, base64.
MIN_SECRET_BYTES = 32
MAKE_SECRET = "make one with: openssl rand -base64 32"
# Values that were ever printed in this repository (docker-compose, examples, tests,
# samples-python's codec key): known to everyone, so refused outside dev at any length.
DEMO_SECRETS = frozenset(
    {
        "compose-demo-only-set-your-own",
        "test-signing-secret",
        "test-webhook-secret",
        "crash-test-signing-secret",
        "soak-signing-secret",
        "corpus-secret",
        "test-key-test-key-test-key-test!",
        "Dealflow tests: not for real use",
        "change-me",
        "changeme",
        "secret",
    }
)
CODEC_KEY_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
CODEC_KEYS_FORM = (
    "write it as ID=BASE64KEY[,OLD_ID=OLD_BASE64KEY...] (the first encrypts; "
    "make a key with: openssl rand -base64 32)"
)


def parse_codec_keys(text: str) -> list[tuple[str, bytes]]:
    """``id=base64key,old-id=base64key``: the payload codec's keys, the first encrypts.

    Errors name the key id, never the key."""
    ring: list[tuple[str, bytes]] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        key_id, equals, encoded = part.partition("=")
        key_id = key_id.strip()
        if not equals or not CODEC_KEY_ID.fullmatch(key_id):
            raise ValueError(f"{ENV_PREFIX}CODEC_KEYS: {CODEC_KEYS_FORM}")
        try:
            key = base64.b64decode(
                encoded.strip().replace("-", "+").replace("_", "/"), validate=True
            )
        except (binascii.Error, ValueError):
            raise ValueError(
                f"{ENV_PREFIX}CODEC_KEYS: key {key_id!r} is not base64; {CODEC_KEYS_FORM}"
            ) from None
        if len(key) != 32:
            raise ValueError(
                f"{ENV_PREFIX}CODEC_KEYS: key {key_id!r} is {len(key)} bytes, AES-256 needs 32 "
                "(make one with: openssl rand -base64 32)"
            )
        if any(key_id == known for known, _ in ring):
            raise ValueError(f"{ENV_PREFIX}CODEC_KEYS: key id {key_id!r} appears twice")
        ring.append((key_id, key))
    if not ring:
        raise ValueError(f"{ENV_PREFIX}CODEC_KEYS is empty; {CODEC_KEYS_FORM}")
    return ring


def format_codec_keys(ring: list[tuple[str, bytes]]) -> str:
    return ",".join(f"{key_id}={base64.b64encode(key).decode()}" for key_id, key in ring)


DASHBOARD_USER = re.compile(r"[A-Za-z0-9._@+-]{1,64}")
HEADER_NAME = re.compile(r"[A-Za-z0-9-]{1,64}")
DASHBOARD_USERS_FORM = (
    "write it as NAME:ARGON2_HASH entries separated by spaces or ';' "
    "(make one with: python starter.py dashboard hash-password NAME)"
)


def parse_dashboard_users(text: str) -> dict[str, str]:
    """``name:$argon2id$...`` entries (spaces or ``;`` between them): name -> hash.

    Errors name the user, never the hash."""
    users: dict[str, str] = {}
    for entry in re.split(r"[\s;]+", text.strip()):
        if not entry:
            continue
        name, colon, hashed = entry.partition(":")
        if not colon or not DASHBOARD_USER.fullmatch(name):
            raise ValueError(f"{ENV_PREFIX}DASHBOARD_USERS: {DASHBOARD_USERS_FORM}")
        if not hashed.startswith("$argon2"):
            raise ValueError(
                f"{ENV_PREFIX}DASHBOARD_USERS: the hash of {name!r} is not an argon2 hash; "
                f"{DASHBOARD_USERS_FORM}"
            )
        if name in users:
            raise ValueError(f"{ENV_PREFIX}DASHBOARD_USERS: user {name!r} appears twice")
        users[name] = hashed
    if not users:
        raise ValueError(
            f"{ENV_PREFIX}DASHBOARD_USERS is empty; unset it or {DASHBOARD_USERS_FORM}"
        )
    return users


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_nested_delimiter="__",
        extra="ignore",
        # A refused value never appears in the error (secrets are refused too).
        hide_input_in_errors=True,
    )

    # Temporal
    temporal_address: str = "localhost:7233"
    temporal_namespace: str = "default"
    temporal_task_queue: str = TASK_QUEUE
    temporal_tls: bool = False
    temporal_tls_cert: Path | None = None
    temporal_tls_key: Path | None = None
    temporal_api_key: SecretStr | None = None

    # SMTP
    smtp_host: str = "localhost"
    smtp_port: int = Field(default=1025, ge=1, le=65535)
    smtp_tls: SmtpTls = SmtpTls.NONE
    smtp_allow_insecure: bool = False
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_timeout: float = Field(default=30.0, gt=0)
    smtp_pool_size: int = Field(default=16, ge=1, le=64)

    # Who sends, and the addresses a deal involves
    sender_name: str = "Dealflow Sales"
    sender_address: EmailStr = "sales@example.com"
    reply_to: EmailStr | None = None
    company_name: str = "Dealflow Demo Ltd"
    company_postal_address: str = (
        "Dealflow Demo Ltd\n1 Example Street\nLondon EC1A 1AA\nUnited Kingdom"
    )
    rep_address: EmailStr = "rep@example.com"
    fulfilment_address: EmailStr = "fulfilment@example.com"
    win_loss_interviewer: EmailStr | None = None

    # Cadence: the profile picks the defaults; DEALFLOW_CADENCE__<FIELD> overrides one field.
    cadence_profile: CadenceProfile = CadenceProfile.STANDARD
    cadence: dict[str, object] = Field(default_factory=dict)

    # The buyer's business calendar: emails to buyers go out only inside this window,
    # buyer-local ("always" to send at any time), never on the holidays of the country.
    send_window: str = "mon-fri 09:00-17:00"
    holiday_country: str | None = None
    extra_holidays: list[date] = Field(default_factory=list)
    shift_policy: ShiftPolicy = ShiftPolicy.SHIFT

    # Throttling per sending mailbox: sends run on their own task queue, which the
    # Temporal server rate-limits across all workers (None: no limit).
    send_rate_per_second: float | None = Field(default=None, gt=0)
    # At most this many emails from the sender address in any 24 hours (None: no cap);
    # the rest wait for a free slot, nothing is dropped.
    send_cap_per_24h: int | None = Field(default=None, gt=0)
    send_cap_window: timedelta = timedelta(hours=24)

    # Why deals are lost, as codes managers can count (``lost --reason CODE``), comma-separated.
    lost_reasons: str = "price,timing,competitor,no_budget,no_decision,other"

    # Sends that keep failing transiently (SMTP down) are retried this long, then recorded.
    send_retry_for: timedelta = Field(
        default=timedelta(hours=24), gt=timedelta(0), le=bounds.MAX_SEND_RETRY
    )
    # A deal that closes holding emails that failed for good stays open this long for ops
    # to `resend` them, then ends and drops them.
    resend_window: timedelta = Field(
        default=timedelta(days=14), ge=timedelta(0), le=bounds.MAX_RESEND_WINDOW
    )

    # A stack on this machine only (the tests, local experiments): short and demo secrets
    # and an http public URL are accepted. Never in production; `make dev` does not need it.
    dev: bool = False

    # Signed tokens in emails (Reply-To address, unsubscribe links). Every worker and the
    # HTTP endpoints need the same secret; unset, one is made and kept in the data directory.
    signing_secret: SecretStr | None = None
    # Secrets used before the current one, comma-separated: what they signed (the links,
    # reply addresses and Message-IDs of emails already sent) is still accepted.
    signing_secret_previous: SecretStr | None = None
    # Payload encryption (AES-256-GCM) of everything Dealflow hands Temporal: "id=base64key"
    # entries, comma-separated, the first encrypts, the others only decrypt (rotation).
    # Unset, one key is made and kept in the data directory (dev, one host).
    codec_keys: SecretStr | None = None
    # The codec server (/codec/decode, /codec/encode on the endpoints) for the Temporal UI;
    # unset, it is off (404).
    codec_server_token: SecretStr | None = None
    # Origins (comma-separated) allowed to call the codec server: the Temporal UI's.
    codec_cors_origins: str = "http://localhost:8233"
    # Where buyers reach the HTTP endpoints (the unsubscribe links point here). A worker
    # outside dev refuses to start unless it is set (see public_url_refusal).
    public_url: str = "http://localhost:8080"
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=0, le=65535)
    # The managers' dashboard (read-only reports from the ledger), on its own port. Beyond
    # loopback it needs sign-in: argon2 users ("name:$argon2id$...", separated by spaces or
    # ";"; `starter.py dashboard hash-password NAME` makes one), or a header a trusted
    # reverse proxy sets to the signed-in user, taken only from the proxy's addresses.
    dashboard_host: str = "127.0.0.1"
    dashboard_port: int = Field(default=8090, ge=0, le=65535)
    dashboard_users: SecretStr | None = None
    dashboard_proxy_header: str | None = None
    dashboard_proxy_addresses: str = "127.0.0.1,::1"
    # Where the dashboard links a deal (the Temporal UI; `make dev` sets its own).
    temporal_ui_url: str = "http://localhost:8233"
    # Fulfilment / ERP webhook: HMAC-SHA256 over "<timestamp>.<body>"; unset, it is closed.
    webhook_secret: SecretStr | None = None
    webhook_tolerance: timedelta = timedelta(minutes=5)

    # The mailbox buyers reply to (IMAP); unset host: no poller runs.
    imap_host: str | None = None
    imap_port: int = Field(default=993, ge=1, le=65535)
    imap_tls: ImapTls = ImapTls.IMPLICIT
    imap_username: str | None = None
    imap_password: SecretStr | None = None
    imap_folder: str = "INBOX"
    imap_poll_every: timedelta = timedelta(minutes=1)
    imap_batch_size: int = Field(default=200, ge=1, le=5000)

    # The ledger (send ledger): a SQL database; unset, a SQLite file in the data directory.
    # Production: postgresql://USER:PASSWORD@HOST:5432/dealflow
    database_url: SecretStr | None = None

    # Reports: a rate resting on fewer deals than this shows as "not enough data".
    report_min_deals: int = Field(default=10, ge=1)

    # Worker
    max_cached_workflows: int = Field(default=10_000, ge=0)
    max_concurrent_activities: int = Field(default=64, ge=1)
    # Workflow tasks run Python under one GIL: a few at a time finish each within its
    # 10 s timeout, where the SDK's 100 would all time out together after a restart
    # (every deal replaying at once) and be retried, again and again.
    max_concurrent_workflow_tasks: int = Field(default=8, ge=2)
    bulk_start_concurrency: int = Field(default=16, ge=1, le=512)

    # Files and the embedded dev stack
    data_dir: Path = Path(".data")
    templates_dir: Path = Path(__file__).resolve().parent / "templates"
    dev_temporal_port: int = Field(default=7233, ge=1, le=65535)
    dev_ui_port: int = Field(default=8233, ge=1, le=65535)
    dev_smtp_port: int = Field(default=1025, ge=1, le=65535)
    dev_imap_port: int = Field(default=1143, ge=1, le=65535)

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.smtp_tls is SmtpTls.NONE and not (
            _is_loopback(self.smtp_host) or self.smtp_allow_insecure
        ):
            raise ValueError(
                "smtp_tls=none sends mail in clear text and is for a local SMTP sink only; "
                "set DEALFLOW_SMTP_TLS=starttls or implicit (or DEALFLOW_SMTP_ALLOW_INSECURE=true)"
            )
        if self.imap_host and not (self.imap_username and self.imap_password):
            raise ValueError(
                "DEALFLOW_IMAP_HOST needs DEALFLOW_IMAP_USERNAME and DEALFLOW_IMAP_PASSWORD"
            )
        if self.imap_host and self.imap_tls is ImapTls.NONE and not _is_loopback(self.imap_host):
            raise ValueError(
                "imap_tls=none reads the mailbox in clear text and is for a local server only; "
                "use DEALFLOW_IMAP_TLS=implicit (port 993)"
            )
        if bool(self.temporal_tls_cert) != bool(self.temporal_tls_key):
            raise ValueError("DEALFLOW_TEMPORAL_TLS_CERT and DEALFLOW_TEMPORAL_TLS_KEY go together")
        if self.database_url is not None:
            # The scheme only: the full check needs SQLAlchemy, too slow to import for every
            # CLI command; the ledger checks the rest when it connects.
            scheme = self.database_url.get_secret_value().partition(":")[0].split("+")[0]
            if scheme not in ("sqlite", "postgresql"):
                raise ValueError(
                    f"DEALFLOW_DATABASE_URL names {scheme!r}: the ledger runs on sqlite "
                    "(sqlite:///PATH) or postgresql (postgresql://USER:PASSWORD@HOST:PORT/DB)"
                )
        self._check_secrets()
        for code in self.lost_reason_codes:
            if not bounds.REASON_CODE.fullmatch(code):
                raise ValueError(
                    f"{ENV_PREFIX}LOST_REASONS: {code!r} is not a code; use lower-case "
                    "letters, digits and _ (at most 32), comma-separated, e.g. price,timing"
                )
        if not bounds.TASK_QUEUE.fullmatch(self.send_task_queue):
            raise ValueError(
                f"{ENV_PREFIX}TEMPORAL_TASK_QUEUE {self.temporal_task_queue[:40]!r} is not a "
                "task queue name; use at most 195 letters, digits and . _ : @ / - (starting "
                "with a letter or digit), e.g. dealflow"
            )
        if not self.lost_reason_codes:
            raise ValueError(f"{ENV_PREFIX}LOST_REASONS is empty; list at least one code")
        if self.codec_keys is not None:
            ring = parse_codec_keys(self.codec_keys.get_secret_value())
            if not self.dev:
                for key_id, key in ring:
                    if key.decode("latin-1") in DEMO_SECRETS:
                        raise ValueError(
                            f"{ENV_PREFIX}CODEC_KEYS: key {key_id!r} is a published demo key; "
                            "make one with: openssl rand -base64 32"
                        )
        url = urlsplit(self.public_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"{ENV_PREFIX}PUBLIC_URL should look like https://deals.example.com")
        if self.dev and not _is_loopback(url.hostname):
            raise ValueError(
                f"{ENV_PREFIX}DEV=true is for a stack on this machine only, but "
                f"{ENV_PREFIX}PUBLIC_URL points at {url.hostname}; unset {ENV_PREFIX}DEV"
            )
        if url.scheme != "https" and not (self.dev or _is_loopback(url.hostname)):
            raise ValueError(
                f"{ENV_PREFIX}PUBLIC_URL must be https:// (the unsubscribe links carry "
                "signed tokens); put the endpoints behind a TLS proxy"
            )
        if self.dashboard_users is not None:
            parse_dashboard_users(self.dashboard_users.get_secret_value())
        if self.dashboard_proxy_header is not None and not HEADER_NAME.fullmatch(
            self.dashboard_proxy_header
        ):
            raise ValueError(
                f"{ENV_PREFIX}DASHBOARD_PROXY_HEADER {self.dashboard_proxy_header!r} is not a "
                "header name; write it as e.g. X-Forwarded-User"
            )
        for address in self.dashboard_proxies:
            try:
                ipaddress.ip_network(address, strict=False)
            except ValueError:
                raise ValueError(
                    f"{ENV_PREFIX}DASHBOARD_PROXY_ADDRESSES: {address!r} is not an IP address "
                    "or network; list the proxy's, comma-separated, e.g. 10.0.0.5,10.1.0.0/16"
                ) from None
        ui = urlsplit(self.temporal_ui_url)
        if ui.scheme not in ("http", "https") or not ui.hostname:
            raise ValueError(
                f"{ENV_PREFIX}TEMPORAL_UI_URL should look like https://temporal.example.com"
            )
        self.window  # noqa: B018 - validates the window at start-up
        try:
            self.default_cadence  # noqa: B018 - validates the overrides at start-up
        except ValidationError as error:
            first = error.errors()[0]
            field = "__".join(str(part) for part in first["loc"]).upper()
            raise ValueError(f"{ENV_PREFIX}CADENCE__{field}: {first['msg']}") from None
        return self

    def public_url_refusal(self) -> str | None:
        """Why a worker outside dev must not mail links to the public URL, or None.

        The default points at this machine, so outside dev the URL must be set; the
        validator has already refused http unless the host is loopback. A loopback URL
        set on purpose is accepted: its links reach this machine only (tests, a trial)."""
        if self.dev or "public_url" in self.model_fields_set:
            return None
        return (
            f"{ENV_PREFIX}PUBLIC_URL is not set: set it to the https:// address buyers reach "
            "the endpoints at (e.g. https://deals.example.com); the unsubscribe links in "
            f"emails point there, and the default {self.public_url} is this machine"
        )

    @property
    def lost_reason_codes(self) -> list[str]:
        return [code.strip() for code in self.lost_reasons.split(",") if code.strip()]

    def _check_secrets(self) -> None:
        """Each secret: 32 bytes at least, never a published demo value (dev: any non-empty)."""
        named = {
            "SIGNING_SECRET": self.signing_secret,
            "WEBHOOK_SECRET": self.webhook_secret,
            "CODEC_SERVER_TOKEN": self.codec_server_token,
        }
        for number, old in enumerate(self.previous_signing_keys(), 1):
            named[f"SIGNING_SECRET_PREVIOUS (entry {number})"] = SecretStr(old or " ")
        for name, secret in named.items():
            if secret is None:
                continue
            value = secret.get_secret_value()
            variable = f"{ENV_PREFIX}{name}"
            if not value.strip():
                raise ValueError(f"{variable} is empty; unset it or {MAKE_SECRET}")
            if self.dev:
                continue
            if value.strip() in DEMO_SECRETS:
                raise ValueError(f"{variable} is a published demo value; {MAKE_SECRET}")
            if len(value.encode()) < MIN_SECRET_BYTES:
                raise ValueError(
                    f"{variable} is {len(value.encode())} bytes, it needs at least "
                    f"{MIN_SECRET_BYTES}; {MAKE_SECRET}"
                )

    @cached_property
    def default_cadence(self) -> Cadence:
        base = demo_cadence() if self.cadence_profile is CadenceProfile.DEMO else Cadence()
        overrides = {key.lower(): _json_or_text(value) for key, value in self.cadence.items()}
        return base.model_validate({**base.model_dump(), **overrides})

    @cached_property
    def window(self) -> SendWindow | None:
        """The send window, or None when buyers may be emailed at any time."""
        return parse_window(self.send_window)

    @property
    def ledger_url(self) -> str:
        """The ledger database's URL (with its password: never print it)."""
        if self.database_url is not None:
            return self.database_url.get_secret_value()
        return f"sqlite:///{(self.data_dir / 'ledger.sqlite3').resolve()}"

    @property
    def send_task_queue(self) -> str:
        return f"{self.temporal_task_queue}-send"

    @property
    def sender_domain(self) -> str:
        return str(self.sender_address).rsplit("@", 1)[1]

    @property
    def outbox_dir(self) -> Path:
        return self.data_dir / "outbox"

    @property
    def reply_base(self) -> str:
        """The address replies go to; each deal's Reply-To adds its token to the local part."""
        return str(self.reply_to or self.sender_address)

    def signing_key(self) -> str:
        """The signing secret; unset, a random one kept in the data directory (dev, one host)."""
        if self.signing_secret is not None:
            return self.signing_secret.get_secret_value()
        path = self.data_dir / "signing-secret"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_urlsafe(32))
            path.chmod(0o600)
        return path.read_text().strip()

    def previous_signing_keys(self) -> list[str]:
        if self.signing_secret_previous is None:
            return []
        return [old.strip() for old in self.signing_secret_previous.get_secret_value().split(",")]

    def token_signer(self) -> TokenSigner:
        """What signs (and checks) the tokens and Message-IDs in emails."""
        from activities.signed_tokens import TokenSigner

        return TokenSigner(self.signing_key(), previous=self.previous_signing_keys())

    def codec_key_ring(self) -> list[tuple[str, bytes]]:
        """The payload codec's keys (id, key), the first encrypts; unset, one made once and
        kept in the data directory (dev, one host: every process there shares it)."""
        if self.codec_keys is not None:
            return parse_codec_keys(self.codec_keys.get_secret_value())
        path = self.data_dir / "codec-keys"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            made = [(f"local-{secrets.token_hex(4)}", secrets.token_bytes(32))]
            # Written under a temporary name, then renamed: two processes starting at once
            # must not read a half-written file.
            scratch = path.with_name(f".codec-keys-{secrets.token_hex(4)}")
            scratch.write_text(format_codec_keys(made) + "\n")
            scratch.chmod(0o600)
            try:
                # A hard link never replaces a file: the first process's key wins.
                path.hardlink_to(scratch)
            except FileExistsError:
                pass
            finally:
                scratch.unlink(missing_ok=True)
        return parse_codec_keys(path.read_text().strip())

    @property
    def dashboard_proxies(self) -> list[str]:
        """The addresses (or networks) whose proxy header the dashboard believes."""
        return [part.strip() for part in self.dashboard_proxy_addresses.split(",") if part.strip()]

    @property
    def codec_origins(self) -> list[str]:
        return [origin.strip() for origin in self.codec_cors_origins.split(",") if origin.strip()]


def _variable(loc: tuple[int | str, ...]) -> str:
    return ENV_PREFIX + "__".join(str(part) for part in loc).upper()


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment; on a bad value, one line naming the variable, exit 2."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as error:
        first = error.errors()[0]
        loc = first["loc"]
        message = first["msg"].removeprefix("Value error, ")
        where = f" {_variable(loc)}" if loc else ""
        print(f"dealflow: invalid setting{where}: {message}", file=sys.stderr)
        raise SystemExit(2) from None
