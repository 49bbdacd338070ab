"""The HTTP API's FastAPI app: routes, the auth dependency (one role table, `server/auth.py:ROLE_FOR_ROUTE`), health.

`build_app(service, options, tokens, jobs)` is all a front needs; handlers are thin: read the body (bounded), call
the service on a handler thread, shape the reply (`serving_*.py`; the files and fine-tuning routes are declared by
`serving_fine_tuning.py`, over `jobs`). Errors leave through `errors.py`. `authorize` leaves the caller's
`Identity` on `request.state.identity` for the handlers that record who asked (jobs, files).
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from ..auth import OPEN_ROUTES, ROLE_FOR_ROUTE, Identity, check_caller
from ..errors import ServerShuttingDown
from ..jobs_service import JobsService
from ..limits import max_request_bytes
from ..options import ServerOptions
from ..portal.app import PREFIX as PORTAL_PREFIX, build_portal
from ..service import InferenceService
from ..tokens import TokenStore
from . import serving_adapters, serving_fine_tuning
from .body import parse_body
from .errors import install_handlers
from .protocol import FeedbackRequest, LoadAdapterRequest, UnloadAdapterRequest
from .serving_completions import CompletionServing

JSON_ESCAPE_FACTOR = 6  # a prompt byte may arrive as a six-byte JSON escape (\u00e9)


@dataclass
class HttpState:
    """What the handlers share: the service, the options, the tokens (None: auth off), the handler threads, the jobs
    (None: this server takes no fine-tuning jobs, and those routes answer 501)."""

    service: InferenceService
    options: ServerOptions
    tokens: TokenStore | None
    pool: ThreadPoolExecutor
    body_limit: int
    jobs: JobsService | None = None
    draining: bool = False
    completions: CompletionServing = field(init=False)

    def __post_init__(self):
        self.completions = CompletionServing(self.service, self.options, self.pool, self.body_limit)

    async def call(self, fn, *args):
        """`fn(*args)` on a handler thread (service calls block: registry reads, adapter loads)."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def check_serving(self) -> None:
        if self.draining:
            raise ServerShuttingDown("the server is shutting down and takes no new requests")


def body_limit(options: ServerOptions, prompt_bytes: int) -> int:
    """--http-max-body-kb, or (0) the largest request the prompt limit lets through, every byte JSON-escaped."""
    return options.http_max_body_kb * 1024 or JSON_ESCAPE_FACTOR * max_request_bytes(prompt_bytes)


def authorize(request: Request) -> None:
    """The route's role (ROLE_FOR_ROUTE) from `Authorization: Bearer <token>`; a dependency of every guarded route.

    The caller is left on `request.state.identity`: its token's name and roles, or a nameless identity with auth off."""
    state: HttpState = request.app.state.loradock
    route = f"{request.method} {request.scope['route'].path}"
    peer = f"{request.client.host}:{request.client.port}" if request.client else "-"
    request.state.identity = Identity("", frozenset(), peer)
    if state.tokens is None or route in OPEN_ROUTES:
        return
    header = request.headers.get("authorization")
    token = None
    if header is not None:
        scheme, _, value = header.partition(" ")
        token = value.strip() if scheme.lower() == "bearer" else ""
    entry = check_caller(state.tokens, token, ROLE_FOR_ROUTE.get(route), route, route, peer,
                         "send `Authorization: Bearer <token>`")
    request.state.identity = Identity(entry.name, entry.roles, peer)


def build_app(service: InferenceService, options: ServerOptions, tokens: TokenStore | None,
              jobs: JobsService | None = None) -> FastAPI:
    app = FastAPI(title="loradock", docs_url=None, redoc_url=None, openapi_url=None, dependencies=[Depends(authorize)])
    state = app.state.loradock = HttpState(
        service, options, tokens, ThreadPoolExecutor(options.handler_threads, thread_name_prefix="loradock-http"),
        body_limit(options, service.max_prompt_bytes), jobs)
    install_handlers(app)
    serving_fine_tuning.add_routes(app)
    @app.post("/v1/completions")
    async def completions(request: Request):
        state.check_serving()
        return await state.completions.create(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        state.check_serving()
        return await state.completions.create(request, chat=True)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": await state.call(serving_adapters.model_cards, service)}

    @app.post("/v1/load_lora_adapter")
    async def load_lora_adapter(request: Request):
        body = await parse_body(request, LoadAdapterRequest, state.body_limit, options.http_timeout_s)
        return await state.call(serving_adapters.load_adapter, service, options, body)

    @app.post("/v1/unload_lora_adapter")
    async def unload_lora_adapter(request: Request):
        body = await parse_body(request, UnloadAdapterRequest, state.body_limit, options.http_timeout_s)
        return await state.call(serving_adapters.unload_adapter, service, body)

    @app.post("/v1/feedback")
    async def feedback(request: Request):
        body = await parse_body(request, FeedbackRequest, state.body_limit, options.http_timeout_s)
        return await state.call(serving_adapters.record_feedback, service, body)

    @app.get("/metrics")
    async def metrics(request: Request):
        content, content_type = await state.call(service.metrics.exposition, request.headers.get("accept", ""))
        return Response(content, media_type=content_type)

    # The portal (server/portal/): its own app, its own sign-in (a session cookie, not a bearer header).
    app.mount(PORTAL_PREFIX, build_portal(service.registry, tokens, jobs, service, secure_cookies=bool(options.tls_cert)))

    @app.get("/health")
    async def health():
        if state.draining:
            return JSONResponse({"status": "draining"}, status_code=503, headers={"Retry-After": "1"})
        return {"status": "serving", "base": service.base.name}

    return app
