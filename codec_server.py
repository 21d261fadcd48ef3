"""The codec server: lets the Temporal UI (and ``temporal`` CLI) show decrypted payloads.

Temporal stores only what ``payload_codec`` sealed. The UI posts the payloads it shows
to ``<endpoint>/decode`` in Temporal's JSON form (``{"payloads": [{"metadata": {...},
"data": "<base64>"}]}``) and shows what comes back; ``/encode`` does the reverse (for
the UI's "send signal" and the CLI). Both routes are mounted on the endpoints app under
``/codec``:

- off (404) unless ``DEALFLOW_CODEC_SERVER_TOKEN`` is set;
- guarded by that token, sent as ``Authorization: Bearer <token>``, or, for a Temporal
  UI without single sign-on (it cannot add a header of its own), as a path segment:
  ``/codec/<token>/decode`` (so TEMPORAL_CODEC_ENDPOINT=https://…/codec/<token>);
- CORS answered for the origins of ``DEALFLOW_CODEC_CORS_ORIGINS`` only.

Access logs are off on the endpoints (they would keep a path's token). Shaped after
temporalio/samples-python ``encryption/codec_server.py``.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Sequence

from google.protobuf import json_format
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from temporalio.api.common.v1 import Payload, Payloads

from payload_codec import EncryptionCodec, UndecryptablePayload
from settings import Settings

# A history's payloads are at most 2 MiB each (Temporal's blob limit); the UI sends a few.
MAX_BODY_BYTES = 16 * 1024 * 1024
ALLOWED_HEADERS = "authorization,content-type,x-namespace"

Transform = Callable[[Sequence[Payload]], Awaitable[list[Payload]]]


class CodecServer:
    def __init__(self, settings: Settings) -> None:
        token = settings.codec_server_token
        self._token = token.get_secret_value().encode() if token is not None else None
        self._origins = set(settings.codec_origins)
        self._codec = EncryptionCodec(settings.codec_key_ring()) if token is not None else None

    def __repr__(self) -> str:
        return f"CodecServer(on={self._token is not None}, origins={sorted(self._origins)})"

    def _cors(self, request: Request, response: Response) -> Response:
        origin = request.headers.get("origin")
        if origin is not None and origin in self._origins:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Allow-Methods"] = "POST, OPTIONS"
            response.headers["Access-Control-Allow-Headers"] = ALLOWED_HEADERS
            response.headers["Access-Control-Allow-Credentials"] = "true"
            response.headers["Vary"] = "Origin"
        return response

    def _authorised(self, request: Request) -> bool:
        assert self._token is not None
        offered = request.path_params.get("token")
        if offered is None:
            scheme, _, value = request.headers.get("authorization", "").partition(" ")
            offered = value.strip() if scheme.lower() == "bearer" else ""
        return hmac.compare_digest(offered.encode(), self._token)

    async def preflight(self, request: Request) -> Response:
        if self._token is None:
            return PlainTextResponse("not found", status_code=404)
        # A preflight carries no credentials: it is answered for the allowed origins only.
        return self._cors(request, Response(status_code=204))

    async def decode(self, request: Request) -> Response:
        return await self._apply(request, lambda codec: codec.decode)

    async def encode(self, request: Request) -> Response:
        return await self._apply(request, lambda codec: codec.encode)

    async def _apply(
        self, request: Request, pick: Callable[[EncryptionCodec], Transform]
    ) -> Response:
        if self._token is None or self._codec is None:
            return PlainTextResponse("not found", status_code=404)
        if not self._authorised(request):
            return self._cors(request, PlainTextResponse("unauthorised", status_code=401))
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                return self._cors(request, PlainTextResponse("too large", status_code=413))
        try:
            payloads = json_format.Parse(bytes(body), Payloads())
        except (json_format.ParseError, UnicodeDecodeError):
            return self._cors(
                request,
                PlainTextResponse(
                    'expected Temporal\'s JSON payloads: {"payloads": [...]}', status_code=400
                ),
            )
        try:
            done = await pick(self._codec)(list(payloads.payloads))
        except UndecryptablePayload as error:
            return self._cors(request, PlainTextResponse(str(error), status_code=400))
        text = json_format.MessageToJson(Payloads(payloads=done))
        return self._cors(request, Response(text, media_type="application/json"))


def codec_routes(settings: Settings) -> list[Route]:
    """The codec server's routes, to mount on the endpoints app."""
    server = CodecServer(settings)
    routes: list[Route] = []
    for prefix in ("/codec", "/codec/{token:path}"):
        routes += [
            Route(f"{prefix}/decode", server.decode, methods=["POST"]),
            Route(f"{prefix}/encode", server.encode, methods=["POST"]),
            Route(f"{prefix}/decode", server.preflight, methods=["OPTIONS"]),
            Route(f"{prefix}/encode", server.preflight, methods=["OPTIONS"]),
        ]
    return routes
