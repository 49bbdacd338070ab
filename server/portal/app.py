"""The portal's app: `build_portal(registry, tokens)` -> a FastAPI app the HTTP front mounts at `/ui`.

Pages are server-rendered (Jinja2, autoescaped) and read through the one registry interface (`RegistryAPI`), so
the portal shows the same records `reg ls` / `reg show` print, locally or from a remote registry. Handlers are
plain functions, run on FastAPI's thread pool (registry reads block). A page needs a signed-in session (see
`sessions.py`) whose token has the role the page names; without one the browser is sent to sign in. Errors are the
error table's: the status it gives, and the one-line message the CLI prints.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import parse_qs, quote

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from registry.export.exporter import parse_weighted_ref
from registry.errors import InvalidInput, LoradockError, NotFound, PermissionDenied, TooLarge, Unauthenticated
from registry.fields import help_texts
from registry.jobs import STATES, TERMINAL, SubmitRequest, UploadedFile
from registry.loops import IDLE, LoopConfig, LoopNotFound
from registry.names import check_version_number
from registry.rollout_records import parse_arm
from registry.units import duration_text

from ..http.body import read_body
from ..http.serving_completions import SSE_HEADERS, EventStream, sse_event, stream_deltas
from ..http.serving_fine_tuning import MAX_FORM_OVERHEAD, MAX_UPLOAD_BYTES, form_boundary, parse_form, upload_name
from ..jobs_service import JobsService, JobsUnavailable
from ..service_types import ChatMessage, GenerateRequest, SamplingParams, WeightedAdapter
from ..tokens import TokenStore
from .charts import loss_chart, rollout_charts
from .exports import DTYPES as EXPORT_DTYPES, FORMATS as EXPORT_FORMATS, ExportsUnavailable, PortalExports
from .sessions import SESSION_COOKIE, SESSION_MAX_AGE_S, SIGN_IN_COOKIE, SIGN_IN_MAX_AGE_S, Session, Sessions

HERE = Path(__file__).resolve().parent
JOBS_SHOWN = 200  # the newest jobs on the jobs page
ADAPTERS_SHOWN = 500  # adapters on the Adapters page (each costs a registry read)
HEADLINE_METRICS = ("exact_match", "rouge_l", "bleu", "loss")  # what an adapter's row shows of its latest evaluation
EVENTS_SHOWN = 500  # the newest events on a job's page (its loss chart is drawn from them)
REFRESH_S = 5  # a page showing a job that has not ended reloads itself (no JavaScript needed)
UPLOAD_TIMEOUT_S = 300.0  # a New-job form with its dataset (at most MAX_UPLOAD_BYTES) must arrive within this
# The training config keys the New-job form sets (each shown with the trainer's own default and help).
FORM_KEYS = ["adapter", "lora_r", "lora_alpha", "learning_rate", "num_epochs", "max_steps", "sequence_len",
             "micro_batch_size", "val_set_size", "seed"]
MAX_FORM_BYTES = 16 * 1024  # a sign-in or action form: a token and a few fields
PREFIX = "/ui"
CONTENT_SECURITY_POLICY = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                           "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
PLAYGROUND_COLUMNS = 4  # the base and up to three adapters (or merges) side by side
PLAYGROUND_STREAMS = 8  # threads that read answers as they are decoded (more columns wait for one)
PLAYGROUND_TIMEOUT_S = 300.0  # a playground answer is cancelled past this


class SignInNeeded(Exception):
    """The request has no valid session: the browser is sent to the sign-in page, and back here afterwards."""


def build_portal(registry, tokens: TokenStore | None, jobs: JobsService | None = None, service=None,
                 secure_cookies: bool = False) -> FastAPI:
    """The portal over `registry` (a `RegistryAPI`, local or remote) for the callers `tokens` admits (None: auth off).

    `jobs`: the server's `JobsService`, through which the portal's job actions go (the rules the gRPC and HTTP
    fronts follow: a `train` caller changes its own jobs, an admin anyone's); None: no job actions. `service`: the
    `InferenceService` whose stats and adapter cache the Server page shows (None: a registry-only portal)."""
    app = FastAPI(title="loradock portal", docs_url=None, redoc_url=None, openapi_url=None)
    sessions = Sessions(tokens)
    exports = PortalExports(registry.home, jobs.hooks.export_probes if jobs and jobs.hooks else None) \
        if registry.is_local else None
    streams = ThreadPoolExecutor(PLAYGROUND_STREAMS, thread_name_prefix="portal-stream") if service is not None else None
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    def render(request: Request, template: str, session: Session | None, status: int = 200, **context) -> HTMLResponse:
        return templates.TemplateResponse(request, template, {"session": session, "auth_on": sessions.auth_on,
                                                              "prefix": PREFIX, "serving": service is not None,
                                                              **context}, status_code=status)

    def session_for(request: Request, role: str) -> Session:
        """The request's session if its token has `role`; SignInNeeded or PermissionDenied otherwise."""
        peer = f"{request.client.host}:{request.client.port}" if request.client else "-"
        session = sessions.read(request.cookies.get(SESSION_COOKIE), peer)
        if session is None:
            raise SignInNeeded()
        roles = session.identity.roles
        if "admin" not in roles and role not in roles:
            raise PermissionDenied(f"token {session.identity.token_name!r} has role(s) {', '.join(sorted(roles))}; "
                                   f"this page needs {role!r}")
        return session

    async def session_form(request: Request, role: str) -> tuple[Session, dict[str, str]]:
        """The session (with `role`) and its urlencoded form, which must carry the session's CSRF token."""
        session = session_for(request, role)
        form = await _form(request)
        _check_csrf(session, form)
        return session, form

    @app.middleware("http")
    async def page_headers(request: Request, call_next):
        """Every page may load only this portal's own files (no inline script, no other site), and none may be framed."""
        response = await call_next(request)
        response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        return response

    @app.exception_handler(SignInNeeded)
    async def to_sign_in(request: Request, exc: SignInNeeded):
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"{PREFIX}/sign-in?next={quote(target)}", status_code=303)

    @app.exception_handler(LoradockError)
    async def error_page(request: Request, exc: LoradockError):
        message = " ".join(str(exc).split())
        return render(request, "error.html", None, status=exc.http_status, message=message, title=type(exc).__name__)

    @app.get("/", include_in_schema=False)
    def home():
        return RedirectResponse(f"{PREFIX}/adapters", status_code=303)

    # --- signing in and out ---------------------------------------------------------------------------------

    @app.get("/sign-in", response_class=HTMLResponse)
    def sign_in_form(request: Request, next: str = f"{PREFIX}/adapters", error: str | None = None):
        cookie, nonce = sessions.sign_in_form()
        response = render(request, "sign_in.html", None, title="Sign in", next=_local(next), nonce=nonce, error=error,
                          status=401 if error else 200)
        response.set_cookie(SIGN_IN_COOKIE, cookie, max_age=SIGN_IN_MAX_AGE_S, httponly=True, samesite="strict",
                            secure=secure_cookies, path=PREFIX)
        return response

    @app.post("/sign-in")
    async def sign_in(request: Request):
        form = await _form(request)
        if not sessions.check_sign_in_form(request.cookies.get(SIGN_IN_COOKIE), form.get("csrf", "")):
            raise PermissionDenied("the sign-in form expired or did not come from this portal; open it again")
        target = _local(form.get("next", ""))
        try:
            cookie = sessions.sign_in(form.get("token", "")) if sessions.auth_on else ""
        except Unauthenticated as exc:
            return sign_in_form(request, next=target, error=str(exc))
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(SESSION_COOKIE, cookie, max_age=SESSION_MAX_AGE_S, httponly=True, samesite="strict",
                            secure=secure_cookies, path=PREFIX)
        response.delete_cookie(SIGN_IN_COOKIE, path=PREFIX)
        return response

    @app.post("/sign-out")
    async def sign_out(request: Request):
        await session_form(request, "read")
        response = RedirectResponse(f"{PREFIX}/sign-in", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path=PREFIX)
        return response

    # --- adapters and versions ------------------------------------------------------------------------------

    @app.get("/adapters", response_class=HTMLResponse)
    def adapters_page(request: Request, q: str = "", base: str = ""):
        session = session_for(request, "read")
        loaded = {a.version: a for a in service.list_adapters(loaded_only=True)} if service is not None else {}
        per_minute: dict[str, int] = {}  # adapter name -> requests in the last minute, over all its versions
        for stats in service.server_stats().adapters if service is not None else []:
            name, sep, _ = stats.version.rpartition(":")
            if sep:
                per_minute[name] = per_minute.get(name, 0) + stats.requests_last_minute
        rows = []
        for summary in registry.list_adapters()[:ADAPTERS_SHOWN]:
            if q.strip().lower() not in summary.name:
                continue
            latest = registry.describe(f"{summary.name}:{summary.latest}") if summary.latest else None
            version = latest["version"] if latest else None
            if base and (version is None or version["base_name"] != base):
                continue
            rows.append({"summary": summary, "version": version, "headline": _headline(latest),
                         "serving": loaded.get(version["ref"]) if version else None,
                         "per_minute": per_minute.get(summary.name, 0)})
        return render(request, "adapters.html", session, title="Adapters", rows=rows, q=q, base=base,
                      bases=[b.name for b in registry.list_bases()])

    @app.get("/adapters/{name}", response_class=HTMLResponse)
    def adapter_page(request: Request, name: str):
        session = session_for(request, "read")
        versions = registry.list_versions(name)
        aliases = registry.aliases(name)
        by_version: dict[int, list[str]] = {}
        for alias, number in sorted(aliases.items()):
            by_version.setdefault(number, []).append(alias)
        capture, loop = capture_and_loop(registry, name)
        return render(request, "adapter.html", session, title=f"Adapter {name}", name=name, versions=versions,
                      aliases=by_version, local=registry.is_local, capture=capture, loop_info=loop,
                      retention=duration_text(capture["config"]["retain_s"]) if capture and capture["on"] else None,
                      settings=loop_settings(loop["config"]) if loop else [], loop_help=LOOP_HELP,
                      turns=[turn_view(run) for run in loop["history"]] if loop else [],
                      refresh_s=REFRESH_S if loop and loop["state"] != IDLE else None)

    @app.get("/versions/{ref}", response_class=HTMLResponse)
    def version_page(request: Request, ref: str):
        session = session_for(request, "read")
        described = registry.describe(ref)
        run = described["run"]
        chart = loss_chart((run or {}).get("metrics") or {})
        v = described["version"]
        exporting = exports.status(v["ref"]) if exports is not None else None
        may_push = bool({"push", "admin"} & session.identity.roles)
        return render(request, "version.html", session, title=f"Version {v['ref']}", d=described, v=v, run=run,
                      chart=chart, may_roll_out=may_push, may_export=may_push and exports is not None,
                      exporting=exporting, export_formats=EXPORT_FORMATS, export_dtypes=EXPORT_DTYPES,
                      refresh_s=REFRESH_S if exporting and "state" in exporting else None,
                      downloadable={x["id"] for x in described["exports"] if exports is not None
                                    and x["status"] == "passed" and Path(x["out_path"]).parent == exports.root},
                      others=[n for n in registry.list_versions(v["adapter"]) if n.number != v["number"]],
                      alias_history=list(reversed(registry.alias_history(v["adapter"]))))

    @app.post("/versions/{ref}/export")
    async def start_export(request: Request, ref: str):
        session, form = await session_form(request, "push")  # it records an export against the version
        if exports is None:
            raise ExportsUnavailable("exports run where the registry's files are: `reg export` on the registry's host")
        version = await run_in_threadpool(registry.resolve, ref)
        exports.start(version.ref, form.get("format", "merged"), form.get("dtype", "auto"),
                      session.identity.token_name or None)
        return RedirectResponse(f"{PREFIX}/versions/{quote(version.ref)}#exports", status_code=303)

    @app.get("/versions/{ref}/exports/{export_id}.tar")
    def download_export(request: Request, ref: str, export_id: int):
        session_for(request, "read")
        if exports is None:
            raise ExportsUnavailable("exports are downloaded where the registry's files are (this registry is remote)")
        filename, chunks = exports.download(registry.describe(ref), export_id)
        return StreamingResponse(chunks, media_type="application/x-tar",
                                 headers={"Content-Disposition": f'attachment; filename="{filename}"'})

    @app.post("/versions/{ref}/alias")
    async def set_alias(request: Request, ref: str):
        session, form = await session_form(request, "push")  # as SetAlias needs
        version = await run_in_threadpool(registry.resolve, ref)
        await run_in_threadpool(registry.set_alias, version.adapter, form.get("alias", "").strip(), version.number,
                                session.identity.token_name or None)
        return RedirectResponse(f"{PREFIX}/versions/{quote(version.ref)}", status_code=303)

    @app.get("/diff", response_class=HTMLResponse)
    def diff_page(request: Request, a: str, b: str):
        session = session_for(request, "read")
        return render(request, "diff.html", session, title=f"{a} against {b}", diff=registry.diff(a, b))

    # --- rollouts ---------------------------------------------------------------------------------------------

    @app.get("/rollouts", response_class=HTMLResponse)
    def rollouts_page(request: Request):
        session = session_for(request, "read")
        current = registry.rollouts.all_current()
        return render(request, "rollouts.html", session, title="Rollouts", adapters=registry.list_adapters(),
                      current=current)

    def rollout_page(request: Request, session: Session, name: str, canary: int | None = None,
                     error: str | None = None, values: dict | None = None) -> HTMLResponse:
        shown = registry.rollouts.show(name)
        live = [v.number for v in registry.list_versions(name)]
        arms = ""
        if canary is not None and canary in live:
            older = [n for n in live if n < canary]
            arms = f"{max(older)}=90, {canary}=10" if older else f"{canary}=100"
        elif shown["current"]:
            arms = ", ".join(f"{a['version']}={a['weight']}" for a in shown["current"]["arms"])
        roles = session.identity.roles
        report = registry.rollouts.report(name)
        return render(request, "rollout.html", session, title=f"Rollout of {name}", name=name, show=shown,
                      report=report, charts=rollout_charts(report), live=live, arms=arms, error=error, values=values or {},
                      may_change=bool({"push", "admin"} & roles), status=400 if error else 200,
                      refresh_s=REFRESH_S if shown["current"] else None)

    @app.get("/rollouts/{name}", response_class=HTMLResponse)
    def rollout_view(request: Request, name: str, canary: int | None = None):
        return rollout_page(request, session_for(request, "read"), name, canary)

    @app.post("/rollouts/{name}")
    async def rollout_change(request: Request, name: str):
        session, form = await session_form(request, "push")
        try:
            await run_in_threadpool(change_rollout, registry.rollouts, name, form, session.identity.token_name or None)
        except LoradockError as exc:  # the same one-line refusal `reg rollout` prints; nothing changed
            return rollout_page(request, session, name, error=" ".join(str(exc).split()), values=form)
        return RedirectResponse(f"{PREFIX}/rollouts/{quote(name)}", status_code=303)

    # --- the server ------------------------------------------------------------------------------------------

    def serving() -> object:
        if service is None:
            raise NotFound("this portal serves a registry only: no server's stats to show (see `reg serve`)")
        return service

    @app.get("/server", response_class=HTMLResponse)
    def server_page(request: Request):
        serving()  # a registry-only portal has no such page, for anyone
        session = session_for(request, "infer")  # as the ServerStats RPC and /metrics need
        return render(request, "server.html", session, title="Server", stats=serving().server_stats(),
                      adapters=service.list_adapters(), may_manage="admin" in session.identity.roles,
                      refresh_s=REFRESH_S)

    @app.post("/server/adapters")
    async def server_adapters(request: Request):
        _, form = await session_form(request, "admin")  # as LoadAdapter / UnloadAdapter and the HTTP routes need
        ref, action = form.get("ref", ""), form.get("action", "")
        if action not in ("load", "pin", "unload"):
            raise InvalidInput(f"action {action!r}: expected load, pin or unload")
        if action == "unload":
            await run_in_threadpool(serving().unload_adapter, ref)
        else:
            await run_in_threadpool(serving().load_adapter, ref, action == "pin")
        return RedirectResponse(f"{PREFIX}/server", status_code=303)

    # --- the playground: one prompt, several answers side by side -----------------------------------------

    @app.get("/playground", response_class=HTMLResponse)
    def playground_page(request: Request):
        serving()
        session = session_for(request, "infer")  # as Generate and /v1/chat/completions need
        values = {f"target_{i}": target for i, target in enumerate(request.query_params.getlist("target"))}
        return render(request, "playground.html", session, title="Playground", values=values or {"target_0": "base"},
                      columns=PLAYGROUND_COLUMNS, answers={}, max_tokens=service.options.max_new_tokens_limit)

    @app.post("/playground", response_class=HTMLResponse)
    async def playground_answers(request: Request):
        """Without JavaScript: every column answered at once (they share the running batch), then the page."""
        session, form = await session_form(request, "infer")
        asked = [(i, form.get(f"target_{i}", "").strip()) for i in range(PLAYGROUND_COLUMNS)]
        answers = await run_in_threadpool(_answer_all, serving(), form, [(i, t) for i, t in asked if t])
        return render(request, "playground.html", session, title="Playground", values=form, columns=PLAYGROUND_COLUMNS,
                      answers=answers, max_tokens=service.options.max_new_tokens_limit)

    @app.post("/playground/stream")
    async def playground_stream(request: Request):
        """One column's answer as server-sent events: {"delta"} as it is decoded, then {"done"} or {"error"}."""
        _, form = await session_form(request, "infer")
        try:
            generation = await run_in_threadpool(serving().submit, playground_request(form, form.get("target", "")))
        except LoradockError as exc:  # the column shows the one line, as the CLI prints it
            return PlainTextResponse(" ".join(str(exc).split()), status_code=exc.http_status)
        return EventStream(_playground_events(generation, streams), generation.cancel, service.options.http_timeout_s,
                           SSE_HEADERS)

    # --- fine-tuning jobs -----------------------------------------------------------------------------------

    @app.get("/jobs", response_class=HTMLResponse)
    def jobs_page(request: Request, state: str = ""):
        session = session_for(request, "read")
        listed = registry.jobs.list(state=state or None, limit=JOBS_SHOWN)
        live = any(j.state not in TERMINAL for j in listed)
        roles = session.identity.roles
        return render(request, "jobs.html", session, title="Fine-tuning jobs", jobs=listed, state=state,
                      states=STATES, refresh_s=REFRESH_S if live else None,
                      may_submit=jobs is not None and bool({"train", "admin"} & roles))

    def new_job_form(request: Request, session: Session, values: dict, error: str | None = None,
                     upload: UploadedFile | None = None, preview: dict | None = None, status: int = 200) -> HTMLResponse:
        """Step 1 (no `upload` yet): choose the dataset file; step 2: its preview, and the training settings."""
        if jobs is None:
            raise JobsUnavailable("this server takes no fine-tuning jobs (it serves a remote registry): use `reg job`")
        [dataset_type, *fields] = jobs.config_fields(["datasets.type", *FORM_KEYS])
        bases = [b.name for b in registry.list_bases()]
        estimate = None
        if upload is not None and bases:
            try:
                estimate = jobs.plan(job_submission({"base_model": bases[0], **values}, upload, jobs.file_bytes(upload.id)))
            except LoradockError as exc:  # a value the planner cannot read: the same line submitting would give
                estimate = {"error": " ".join(str(exc).split())}
        return render(request, "job_new.html", session, title="New fine-tuning job", fields=fields,
                      dataset_type=dataset_type, bases=bases, values=values, error=error, upload=upload,
                      preview=preview, estimate=estimate, status=400 if error else status)

    @app.get("/jobs/new", response_class=HTMLResponse)
    def new_job_page(request: Request):
        return new_job_form(request, session_for(request, "train"), {})

    @app.post("/jobs/upload")
    async def upload_dataset(request: Request):
        """Step 1 -> 2: check the dataset as the trainer reads it; with no bad line it is stored (a blob) and previewed."""
        session = session_for(request, "train")
        boundary = form_boundary(request.headers.get("content-type", ""), "the dataset upload")
        parts = parse_form(await read_body(request, MAX_UPLOAD_BYTES + MAX_FORM_OVERHEAD, UPLOAD_TIMEOUT_S), boundary)
        values = {name: part.content.decode("utf-8", "replace").strip() for name, part in parts.items()
                  if part.filename is None}
        _check_csrf(session, values)
        part = parts.get("dataset")
        if part is None or not part.filename or not part.content:
            return new_job_form(request, session, values, "dataset: choose a JSONL file to train on")
        filename = upload_name(part.filename, "dataset.jsonl")
        dataset_type = values.get("dataset_type") or "alpaca"
        with tempfile.TemporaryDirectory(prefix="loradock-portal-") as tmp:
            path = Path(tmp) / filename
            path.write_bytes(part.content)
            try:
                preview = await run_in_threadpool(jobs.preview_dataset, path, dataset_type)
                if preview["bad_lines"]:
                    bad = [line.replace(str(path), filename) for line in preview["bad_lines"]]
                    return new_job_form(request, session, values, f"{len(bad)} bad line(s) in {filename}; fix them "
                                        f"and upload it again", preview={**preview, "bad_lines": bad})
                upload = await run_in_threadpool(jobs.add_file, path, filename, "fine-tune", dataset_type,
                                                 session.identity)
            except LoradockError as exc:  # an empty or unreadable file: the trainer's one line, with the user's name
                return new_job_form(request, session, values, " ".join(str(exc).replace(str(path), filename).split()))
        return new_job_form(request, session, {**values, "name": _adapter_name(filename)}, upload=upload,
                            preview=preview)

    @app.post("/jobs/new")
    async def new_job(request: Request):
        """Step 2 -> the job: the stored dataset and the settings, checked as `reg job submit` checks them. The
        form's Estimate button shows `reg plan`'s estimate for the settings instead, and queues nothing."""
        session, values = await session_form(request, "train")
        upload = await run_in_threadpool(jobs.get_file, values.get("file_id", ""))
        if sessions.auth_on and upload.owner != session.identity.token_name and "admin" not in session.identity.roles:
            raise PermissionDenied(f"file {upload.id} was uploaded by {upload.owner!r}, not {session.identity.token_name!r}")
        if values.get("action") == "estimate":
            return await run_in_threadpool(new_job_form, request, session, values, None, upload)
        content = await run_in_threadpool(jobs.file_bytes, upload.id)
        submission = job_submission(values, upload, content)
        try:
            job = await run_in_threadpool(jobs.submit, submission, session.identity, "portal")
        except LoradockError as exc:  # the trainer's one-line refusal (a bad key or value): nothing queued
            return new_job_form(request, session, values, " ".join(str(exc).split()), upload=upload)
        return RedirectResponse(f"{PREFIX}/jobs/{quote(job.id)}", status_code=303)

    def may_change(session: Session, found) -> bool:
        """Whether to show the job's buttons: the caller could cancel or resume it (JobsService decides on POST)."""
        who = session.identity
        return jobs is not None and ("admin" in who.roles or ("train" in who.roles and (
            not sessions.auth_on or found.submitter == who.token_name)))

    async def job_action(request: Request, job_id: str, action: str):
        session, _ = await session_form(request, "train")
        if jobs is None:
            raise JobsUnavailable("this server takes no job actions (it serves a remote registry): use `reg job`")
        change = jobs.cancel if action == "cancel" else jobs.resume
        await run_in_threadpool(change, job_id, session.identity, "portal")
        return RedirectResponse(f"{PREFIX}/jobs/{quote(job_id)}", status_code=303)

    @app.post("/jobs/{job_id}/cancel")
    async def cancel_job(request: Request, job_id: str):
        return await job_action(request, job_id, "cancel")

    @app.post("/jobs/{job_id}/resume")
    async def resume_job(request: Request, job_id: str):
        return await job_action(request, job_id, "resume")

    @app.get("/jobs/{job_id}", response_class=HTMLResponse)
    def job_page(request: Request, job_id: str):
        session = session_for(request, "read")
        found = registry.jobs.get(job_id)
        events = registry.jobs.newest_events(job_id, EVENTS_SHOWN)
        curves = {"train_loss": [[e.data["step"], e.data["loss"]] for e in events if e.type == "metrics" and "loss" in e.data],
                  "val_loss": [[e.data["step"], e.data["eval_loss"]] for e in events
                               if e.type == "metrics" and "eval_loss" in e.data]}
        return render(request, "job.html", session, title=f"Job {found.id}", job=found, events=list(reversed(events)),
                      checkpoints=registry.jobs.checkpoints(job_id), chart=loss_chart(curves),
                      refresh_s=None if found.state in TERMINAL else REFRESH_S, may_change=may_change(session, found),
                      resumable=found.state in ("failed", "cancelled"))

    return app


def job_submission(values: dict[str, str], upload: UploadedFile, content: bytes) -> SubmitRequest:
    """The submission the New-job form describes: its stored dataset, base and name, and each setting filled in."""
    config = {"base_model": values.get("base_model", ""), "push": {"name": values.get("name") or None},
              "datasets": [{"path": upload.filename, "type": values.get("dataset_type") or "alpaca"}]}
    overrides = [f"{key}={values[key]}" for key in FORM_KEYS if values.get(key)]
    return SubmitRequest(config=config, overrides=overrides, files={upload.filename: content}, source="portal")


def playground_request(form: dict[str, str], target: str) -> GenerateRequest:
    """The request one playground column sends: `target` is `base`, a ref (NAME, NAME:N, NAME@ALIAS), or a merge
    written as `reg export --merge` takes it (`REF=WEIGHT REF=WEIGHT`)."""
    prompt = form.get("prompt", "")
    if not prompt.strip():
        raise InvalidInput("prompt: write something for the adapters to answer")
    words = target.replace(",", " ").split()
    merge = [WeightedAdapter(*parse_weighted_ref(word)) for word in words] if "=" in target else []
    adapter = "" if merge or target.strip() in ("", "base") else target.strip()
    raw = form.get("format") == "raw"
    return GenerateRequest(
        adapter=adapter, merge=merge, prompt=prompt if raw else "",
        messages=[] if raw else [ChatMessage("user", prompt)], routing_key=form.get("routing_key", "").strip(),
        params=SamplingParams(max_new_tokens=_int_field(form, "max_tokens", 64), temperature=_float_field(form, "temperature")),
        protocol="http", timeout_s=PLAYGROUND_TIMEOUT_S)


def served_by(version: str, variant: str) -> str:
    """Which version (and rollout arm) answered: what each playground column shows under its answer."""
    return f"served by {version or 'the base'}" + (f", rollout arm {variant}" if variant else "")


def _answer_all(service, form: dict[str, str], targets: list[tuple[int, str]]) -> dict[int, dict]:
    """Each column's answer ({text, served} or {error}); all are submitted before any is awaited, so they batch."""
    pending: dict[int, object] = {}
    answers: dict[int, dict] = {}
    for i, target in targets:
        try:
            pending[i] = service.submit(playground_request(form, target))
        except LoradockError as exc:
            answers[i] = {"error": " ".join(str(exc).split())}
    for i, generation in pending.items():
        try:
            result = generation.result()
            answers[i] = {"text": result.text, "served": served_by(result.adapter_version, result.variant)}
        except LoradockError as exc:
            answers[i] = {"error": " ".join(str(exc).split())}
    return answers


async def _playground_events(generation, pool) -> AsyncIterator[bytes]:
    try:
        async for delta in stream_deltas(generation, pool):
            yield sse_event({"delta": delta})
        result = generation.result()  # ready: the deltas ended
        yield sse_event({"done": True, "served": served_by(result.adapter_version, result.variant),
                      "finish_reason": result.finish_reason})
    except LoradockError as exc:
        yield sse_event({"error": " ".join(str(exc).split())})


def _int_field(form: dict[str, str], key: str, default: int) -> int:
    text = form.get(key, "").strip()
    if not text:
        return default
    if not text.isdigit():
        raise InvalidInput(f"{key} {text!r}: expected a whole number")
    return int(text)


def _float_field(form: dict[str, str], key: str) -> float:
    text = form.get(key, "").strip() or "0"
    try:
        return float(text)
    except ValueError:
        raise InvalidInput(f"{key} {text!r}: expected a number") from None


def _headline(described: dict | None) -> str | None:
    """A version's latest evaluation in a few words: its task metric (else its loss) against the base's."""
    evaluations = (described or {}).get("evaluations") or []
    if not evaluations:
        return None
    latest = evaluations[-1]
    metrics, base = latest["metrics"], latest.get("base_metrics") or {}
    key = next((k for k in HEADLINE_METRICS if isinstance(metrics.get(k), (int, float))), None)
    if key is None:
        return None
    against = f" (base {base[key]:.3g})" if isinstance(base.get(key), (int, float)) else ""
    verdict = "" if latest.get("passed") is None else " passed" if latest["passed"] else " failed"
    return f"{key} {metrics[key]:.3g}{against}{verdict}"


# --- capture and the continuous fine-tuning loop, on an adapter's page -------------------------------------------

LOOP_HELP = help_texts(LoopConfig)  # each loop setting's help, shown on hover over its name
# How a step's recorded numbers read (trainer/loop.py records them); a key not here reads as `KEY VALUE`.
STEP_PHRASES = {
    "requests": "{} requests", "with_feedback": "{} with feedback", "since": "since {}", "captured": "{} captured",
    "kept": "{} kept to train on", "heldout": "{} held out", "corrected": "{} corrected", "duplicates": "{} duplicates",
    "already_trained": "{} already trained on", "format": "{} format", "dataset_sha256": "dataset sha256 {}",
    "excluded": "excluding {}", "job_id": "job {}", "mode": "mode {}", "candidate": "candidate version {}",
    "gate_examples": "{} gate examples", "fixed": "{} fixed", "fresh": "{} fresh", "revision": "rollout revision {}",
    "percent": "{} % of routing keys", "promote_after": "decides after {} requests", "decision": "{}",
    "errors": "{} errors", "success_rate": "success rate {}", "by": "by {}",
}
METRIC_SETS = (("gate set", ""), ("fixed held-out set", "fixed_"))  # the gate's `{prefix}champion_metrics` pairs
SHORT_DIGEST = 12  # hex digits of a dataset's sha256 a step shows (the whole is in `reg loop show --json`)


def capture_and_loop(registry, name: str) -> tuple[dict | None, dict | None]:
    """What `reg capture show NAME` and `reg loop show NAME` print: (capture summary, loop or None when none is set).

    Both are read from the registry's own database, which a remote registry's RPCs do not serve: (None, None) there.
    """
    if not registry.is_local:
        return None, None
    capture = registry.captures.summary(name)
    try:
        loop = registry.loops.show(name)
    except LoopNotFound:
        loop = None
    return capture, loop


def loop_settings(config: dict) -> list[tuple[str, str]]:
    """A loop's settings as `reg loop show` prints them: the gate's rules and the guard's limits on one line each."""
    rows = []
    for key, value in config.items():
        if isinstance(value, list):  # the gate's rules, the evaluation floor's
            value = ", ".join(value) or None
        elif key == "guard":
            value = ", ".join(f"{k}={v:g}" for k, v in value.items() if v is not None)
        rows.append((key, "-" if value is None else str(value)))
    return rows


def turn_view(run: dict) -> dict:
    """One turn of a loop as its page shows it: the run record, with each of its steps as `step_view` reads it."""
    return {**run, "steps": [step_view(step) for step in run["steps"]]}


def step_view(step: dict) -> dict:
    """A step's numbers in words; the lines it judged by (the gate's rules, the decision's comparisons), each with
    the class that marks it passed (ok) or failed (bad); and the gate's metrics, champion beside candidate."""
    numbers = {k: v for k, v in step.items() if k not in ("step", "at")}
    lines = [(line, "ok" if line.endswith(": passed") else "bad") for line in numbers.pop("rules", [])]
    for c in numbers.pop("comparisons", []):
        rate, against = ("-" if r is None else f"{100 * r:.1f}%" for r in (c.get("rate"), c.get("against_rate")))
        p_value = "" if c.get("p_value") is None else f", p={c['p_value']:.3g}"
        verdict = c.get("verdict") or ""
        lines.append((f"{c['metric']}: candidate {rate} against champion {against}{p_value}: {verdict}",
                      "bad" if "worse" in verdict else "ok" if "better" in verdict else ""))
    metrics = []
    for label, prefix in METRIC_SETS:
        champion, candidate = numbers.pop(f"{prefix}champion_metrics", None), numbers.pop(f"{prefix}candidate_metrics", None)
        if champion is not None or candidate is not None:
            keys = sorted(set(champion or {}) | set(candidate or {}))
            metrics.append((label, [(k, (champion or {}).get(k), (candidate or {}).get(k)) for k in keys]))
    passed = numbers.pop("passed", None)
    words = [] if passed is None else ["passed" if passed else "failed"]
    words += [STEP_PHRASES.get(key, key + " {}").format(_step_value(key, value)) for key, value in numbers.items()]
    return {"step": step["step"], "at": step.get("at") or "", "words": ", ".join(words), "lines": lines,
            "metrics": metrics}


def _step_value(key: str, value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{100 * value:.1f}%" if key.endswith("_rate") else f"{value:.4g}"
    if key == "dataset_sha256" and isinstance(value, str):
        return value.removeprefix("sha256:")[:SHORT_DIGEST]
    if key == "since" and isinstance(value, str):
        return value[:19].replace("T", " ")
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return "-" if value is None else str(value)


def _adapter_name(filename: str) -> str:
    """A starting adapter name from an uploaded file's name (`Support Chats.jsonl` -> `support-chats`)."""
    stem = re.sub(r"[^a-z0-9._-]+", "-", Path(filename).stem.lower()).strip("-._")[:64]
    return stem or "my-adapter"


def change_rollout(rollouts, name: str, form: dict[str, str], actor: str | None):
    """One rollout form's change, as `reg rollout set|promote|rollback|clear` makes it; the reason is required."""
    reason, action = form.get("reason", "").strip(), form.get("action", "")
    if not reason:
        raise InvalidInput("reason: say why (it is recorded with the revision, as `--reason` is)")
    if action == "set":
        arms = [parse_arm(a) for a in form.get("arms", "").replace(",", " ").split()]
        return rollouts.set(name, arms, sticky=form.get("sticky") == "on", reason=reason, actor=actor)
    if action == "promote":
        version = form.get("version", "")
        return rollouts.promote(name, check_version_number(int(version) if version.isdigit() else version),
                                reason=reason, actor=actor)
    if action == "rollback":
        return rollouts.rollback(name, reason=reason, actor=actor)
    if action == "clear":
        return rollouts.clear(name, reason=reason, actor=actor)
    raise InvalidInput(f"action {action!r}: expected set, promote, rollback or clear")


def _check_csrf(session: Session, form: dict[str, str]) -> None:
    if not Sessions.check_csrf(session, form.get("csrf")):
        raise PermissionDenied("that form did not come from this session; reload the page and try again")


async def _form(request: Request) -> dict[str, str]:
    """An urlencoded form of at most MAX_FORM_BYTES, one value per field."""
    if "application/x-www-form-urlencoded" not in request.headers.get("content-type", ""):
        raise InvalidInput("expected a form (application/x-www-form-urlencoded)")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise TooLarge(f"the form is over {MAX_FORM_BYTES:,} bytes")
    return {key: values[0] for key, values in parse_qs(body.decode("utf-8", "replace")).items()}


def _local(target: str) -> str:
    """A page of the portal to go to after signing in (never another site: no open redirect)."""
    return target if target.startswith(f"{PREFIX}/") and not target.startswith("//") and "\\" not in target \
        else f"{PREFIX}/adapters"
