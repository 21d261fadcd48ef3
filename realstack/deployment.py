"""The settings of a worker pointed at a local stack, and the ``DEALFLOW_*`` variables
that carry them to the worker's process."""

from __future__ import annotations

import base64
import secrets
from pathlib import Path

# The settings every process of a test shares (the starter in the test process reads the
# same values, so deals and workers agree on addresses, the signing secret and the payload
# codec's key). The secrets are made per run, as a deployment makes its own.
COMMON_SETTINGS: dict[str, str] = {
    "smtp_host": "127.0.0.1",
    "smtp_tls": "none",
    "send_window": "always",
    "signing_secret": secrets.token_urlsafe(32),
    "codec_keys": f"realstack-1={base64.b64encode(secrets.token_bytes(32)).decode()}",
    "public_url": "http://127.0.0.1:8080",
    "sender_address": "sales@seller.example.com",
    "rep_address": "rep@seller.example.com",
    "fulfilment_address": "fulfilment@seller.example.com",
    "company_name": "Seller GmbH",
    "company_postal_address": "Seller GmbH\nHauptstrasse 1\n10115 Berlin",
}


def deployment(
    *, temporal: str, task_queue: str, smtp_port: int, ledger_url: str, data_dir: Path
) -> dict[str, str]:
    """Setting name -> value for one worker: ``load_settings(**it)`` in the test process,
    ``environment(it)`` for the worker's process."""
    return {
        **COMMON_SETTINGS,
        "temporal_address": temporal,
        "temporal_task_queue": task_queue,
        "smtp_port": str(smtp_port),
        "database_url": ledger_url,
        "data_dir": str(data_dir),
    }


def environment(settings: dict[str, str]) -> dict[str, str]:
    """Setting name -> value as the ``DEALFLOW_*`` variables the settings are read from."""
    return {f"DEALFLOW_{name.upper()}": value for name, value in settings.items()}
