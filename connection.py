"""Connecting to Temporal with the settings: one place for address, TLS, API key and the
data converter (pydantic, with the payload codec that encrypts everything we send)."""

from __future__ import annotations

from temporalio.client import Client
from temporalio.converter import DataConverter
from temporalio.service import TLSConfig

from payload_codec import encrypted_data_converter
from settings import Settings


class TemporalUnreachable(Exception):
    pass


def data_converter(settings: Settings) -> DataConverter:
    """Every client of Dealflow's deals (worker, CLI, endpoints, tests) must use this one."""
    return encrypted_data_converter(settings.codec_key_ring())


async def connect(settings: Settings) -> Client:
    tls: TLSConfig | bool = settings.temporal_tls or settings.temporal_api_key is not None
    if settings.temporal_tls_cert and settings.temporal_tls_key:
        tls = TLSConfig(
            client_cert=settings.temporal_tls_cert.read_bytes(),
            client_private_key=settings.temporal_tls_key.read_bytes(),
        )
    api_key = settings.temporal_api_key.get_secret_value() if settings.temporal_api_key else None
    try:
        return await Client.connect(
            settings.temporal_address,
            namespace=settings.temporal_namespace,
            data_converter=data_converter(settings),
            tls=tls,
            api_key=api_key,
        )
    except RuntimeError as error:
        raise TemporalUnreachable(
            f"cannot reach Temporal at {settings.temporal_address} ({error}); "
            "start it with 'make dev' or set DEALFLOW_TEMPORAL_ADDRESS"
        ) from None
