"""OpenAI's files and fine-tuning API (`client.files`, `client.fine_tuning.jobs`) over the server's JobsService.

    POST /v1/files                          upload a JSONL dataset in OpenAI's chat format (purpose "fine-tune")
    GET  /v1/files[/{id}[/content]]         list, describe, download uploaded files
    POST /v1/fine_tuning/jobs               queue a job (protocol.py maps the body onto a training config)
    GET  /v1/fine_tuning/jobs[/{id}]        list, describe jobs (cursor pages: `after`, `limit`)
    POST /v1/fine_tuning/jobs/{id}/cancel   cancel (a running job stops within seconds)
    GET  /v1/fine_tuning/jobs/{id}/events   events, newest first; GET .../checkpoints the checkpoints, newest first

An upload is at most MAX_UPLOAD_BYTES (64 MiB, the most one job submission carries; more is a 413) and may take
UPLOAD_TIME_FACTOR x --http-timeout to arrive. Its multipart/form-data body is split here, with the standard
library's header parser for each part's headers (no python-multipart: the body is already bounded and read
whole), then checked line by line by the trainer's own parser (`JobsService.add_file`) and stored as a blob.
Handlers are thin: parse, call JobsService on a handler thread, shape OpenAI's object (plus a `loradock` object).
"""

from __future__ import annotations

import email.message
import email.policy
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, Query, Request
from fastapi.responses import Response

from registry.errors import BaseNotFound, InvalidInput, LoradockError, NotFound, TooLarge, shown
from registry.jobs import Checkpoint, Job, JobEvent, UploadedFile
from registry.jobs.queue import MAX_EVENTS_PAGE

from ..auth import Identity
from ..errors import BadRequest
from ..jobs_service import JobsService, JobsUnavailable
from .body import parse_body, read_body
from .protocol import DATASET_TYPE, DEFAULT_LEARNING_RATE, FineTuningJobRequest, bad_param, job_submit_request

MAX_UPLOAD_BYTES = 64 * 2**20  # trainer/jobs/submit.py's MAX_SUBMITTED_BYTES: a job carries its file to the queue
MAX_FORM_OVERHEAD = 64 * 2**10  # the multipart framing and the purpose field around the file
MAX_FORM_PARTS = 8
MAX_FILENAME_CHARS = 200
UPLOAD_TIME_FACTOR = 10  # an upload may take this many times --http-timeout (64 MiB at 30 s x 10: 0.2 MiB/s)
FILE_PURPOSE = "fine-tune"
ORGANIZATION = "loradock"  # OpenAI's `organization_id`: one registry is one organisation
OPENAI_EVENT_TYPES = ("message", "metrics")  # ours also has `state` and `checkpoint`: those are messages to OpenAI
METRIC_NAMES = {"loss": "train_loss", "eval_loss": "valid_loss"}  # our metric -> OpenAI's name (both are sent)


def _state(request: Request):
    return request.app.state.loradock


def _jobs(state) -> JobsService:
    if state.jobs is None:
        raise JobsUnavailable("this server has no fine-tuning API: it serves a remote registry; submit jobs to the "
                              "registry's own server (`reg serve` on the registry's host)")
    return state.jobs


def epoch(iso: str | None) -> int | None:
    """OpenAI's timestamps: unix seconds (None stays None)."""
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()) if iso else None


# --- files ------------------------------------------------------------------------------------------------------------


async def create_file(request: Request):
    state = _state(request)
    state.check_serving()
    jobs = _jobs(state)
    form = await read_form(request, state.options.http_timeout_s * UPLOAD_TIME_FACTOR)
    filename, content = _upload(form)
    record = await state.call(store_upload, jobs, content, filename, request.state.identity)
    return file_object(record)


async def list_files(request: Request, purpose: str | None = None, limit: int = Query(1000, ge=1, le=1000),
                     order: Literal["asc", "desc"] = "desc", after: str | None = None):
    state = _state(request)
    records = await state.call(_jobs(state).list_files, purpose or None)
    if order == "asc":
        records.reverse()
    page, has_more = _page(records, [r.id for r in records], after, limit, "file")
    return _list([file_object(r) for r in page], has_more)


async def retrieve_file(request: Request, file_id: str):
    state = _state(request)
    return file_object(await state.call(_jobs(state).get_file, file_id))


async def file_content(request: Request, file_id: str):
    state = _state(request)
    return Response(await state.call(_jobs(state).file_bytes, file_id), media_type="application/octet-stream")


@dataclass
class FormPart:
    filename: str | None
    content: bytes


async def read_form(request: Request, timeout_s: float) -> dict[str, FormPart]:
    """A multipart/form-data body by field name, read whole within the upload limits."""
    boundary = form_boundary(request.headers.get("content-type", ""), "POST /v1/files (fields `file` and `purpose`)")
    try:
        raw = await read_body(request, MAX_UPLOAD_BYTES + MAX_FORM_OVERHEAD, timeout_s)
    except TooLarge:
        raise TooLarge(f"the upload is more than {MAX_UPLOAD_BYTES >> 20} MiB, the most POST /v1/files takes; split the "
                       f"dataset") from None
    return parse_form(raw, boundary)


def form_boundary(content_type: str, what: str) -> bytes:
    """The boundary of a multipart/form-data body; BadRequest naming `what` takes one otherwise."""
    header = email.message.Message()
    header["content-type"] = content_type
    boundary = header.get_param("boundary")
    if header.get_content_type() != "multipart/form-data" or not isinstance(boundary, str) or not 0 < len(boundary) <= 70:
        raise BadRequest(f"Content-Type {shown(content_type, 80)}: {what} takes multipart/form-data with a boundary")
    return boundary.encode("latin-1", "replace")


def parse_form(raw: bytes, boundary: bytes, max_parts: int = MAX_FORM_PARTS) -> dict[str, FormPart]:
    """The parts of a multipart body (RFC 7578), split at `--boundary` lines; each part's bytes exactly as sent."""
    marker, parts = b"--" + boundary, {}
    start = raw.find(marker)  # what precedes the first boundary is a preamble (RFC 2046): ignored
    while start >= 0:
        after_marker = start + len(marker)
        if raw.startswith(b"--", after_marker):
            return parts
        line_end = raw.find(b"\r\n", after_marker)
        headers_end = raw.find(b"\r\n\r\n", line_end) if line_end >= 0 else -1
        following = raw.find(b"\r\n" + marker, headers_end + 4) if headers_end >= 0 else -1
        if following < 0:
            break
        if len(parts) >= max_parts:
            raise BadRequest(f"multipart body: more than {max_parts} parts")
        headers = BytesHeaderParser(policy=email.policy.HTTP).parsebytes(raw[line_end + 2:headers_end + 4])
        name = headers.get_param("name", header="content-disposition")
        if headers.get_content_disposition() != "form-data" or not isinstance(name, str) or not name:
            raise BadRequest("multipart body: a part without `Content-Disposition: form-data; name=...`")
        if name in parts:
            raise bad_param(name, f"multipart body: field {shown(name)} is sent twice")
        filename = headers.get_filename()
        if filename is not None:  # undecodable bytes come as surrogates: keep what reads as text
            filename = filename.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        parts[name] = FormPart(filename, raw[headers_end + 4:following])
        start = following + 2
    raise BadRequest("multipart body: it ends before its closing boundary")


def _upload(form: dict[str, FormPart]) -> tuple[str, bytes]:
    """(filename, bytes) of an upload whose fields are right: `purpose` fine-tune and a `file` with a name."""
    unknown = sorted(set(form) - {"file", "purpose"})
    if unknown:
        raise bad_param(unknown[0], f"{shown(unknown[0])}: not supported by POST /v1/files; leave it out")
    if "purpose" not in form:
        raise bad_param("purpose", f"purpose: required ({FILE_PURPOSE!r})")
    purpose = form["purpose"].content.decode("utf-8", "replace").strip()
    if purpose != FILE_PURPOSE:
        raise bad_param("purpose", f"purpose={shown(purpose)}: this server takes files for fine-tuning only "
                                   f"(purpose {FILE_PURPOSE!r})")
    part = form.get("file")
    if part is None or part.filename is None:
        raise bad_param("file", "file: required, a JSONL file sent as the multipart field `file` with a filename")
    if len(part.content) > MAX_UPLOAD_BYTES:
        raise TooLarge(f"file is {len(part.content):,} bytes, more than {MAX_UPLOAD_BYTES >> 20} MiB (the most POST "
                       f"/v1/files takes); split the dataset")
    return upload_name(part.filename, "upload.jsonl"), part.content


def upload_name(filename: str, default: str) -> str:
    """An uploaded file's own name, without the client's folders (either slash), at most MAX_FILENAME_CHARS."""
    return filename.replace("\\", "/").rsplit("/", 1)[-1].strip()[:MAX_FILENAME_CHARS] or default


def store_upload(jobs: JobsService, content: bytes, filename: str, caller: Identity) -> UploadedFile:
    """Check the bytes line by line as the trainer reads a `chat` dataset, then store them (JobsService.add_file)."""
    with tempfile.TemporaryDirectory(prefix="loradock-upload-") as tmp:
        path = Path(tmp) / "upload.jsonl"
        path.write_bytes(content)
        try:
            record = jobs.add_file(path, filename, FILE_PURPOSE, DATASET_TYPE, caller)
        except LoradockError as exc:
            if str(path) not in str(exc):
                raise
            error = type(exc)(str(exc).replace(str(path), filename))  # the caller's name for the file, not ours
            error.param = "file"
            raise error from None
    return record


def file_object(record: UploadedFile) -> dict:
    return {"object": "file", "id": record.id, "bytes": record.bytes, "created_at": epoch(record.created_at),
            "filename": record.filename, "purpose": record.purpose, "status": "processed", "status_details": None,
            "expires_at": None, "loradock": {"lines": record.lines, "sha256": record.sha256, "owner": record.owner}}


# --- jobs -------------------------------------------------------------------------------------------------------------


async def create_job(request: Request):
    state = _state(request)
    state.check_serving()
    jobs = _jobs(state)
    body = await parse_body(request, FineTuningJobRequest, state.body_limit, state.options.http_timeout_s)
    return await state.call(submit_job, jobs, body, request.state.identity)


async def list_jobs(request: Request, after: str | None = None, limit: int = Query(20, ge=1, le=100)):
    state = _state(request)
    metadata = {key[len("metadata["):-1]: value for key, value in request.query_params.items()
                if key.startswith("metadata[") and key.endswith("]")}
    return await state.call(job_page, _jobs(state), after, limit, metadata)


async def retrieve_job(request: Request, job_id: str):
    state = _state(request)
    jobs = _jobs(state)
    return await state.call(lambda: job_object(jobs.get(job_id), jobs))


async def cancel_job(request: Request, job_id: str):
    state = _state(request)
    jobs = _jobs(state)
    return await state.call(cancel, jobs, job_id, request.state.identity)


async def list_events(request: Request, job_id: str, after: str | None = None,
                      limit: int = Query(20, ge=1, le=MAX_EVENTS_PAGE)):
    state = _state(request)
    return await state.call(event_page, _jobs(state), job_id, after, limit)


async def list_checkpoints(request: Request, job_id: str, after: str | None = None, limit: int = Query(10, ge=1, le=100)):
    state = _state(request)
    return await state.call(checkpoint_page, _jobs(state), job_id, after, limit)


def submit_job(jobs: JobsService, body: FineTuningJobRequest, caller: Identity) -> dict:
    """Queue the job for `body` (its training file's bytes travel with it); the queued job as OpenAI's object."""
    record = _fine_tune_file(jobs, "training_file", body.training_file)
    validation = _fine_tune_file(jobs, "validation_file", body.validation_file) if body.validation_file else None
    request = job_submit_request(body, jobs.file_bytes(record.id), jobs.file_bytes(validation.id) if validation else None)
    try:
        job = jobs.submit(request, caller)
    except BaseNotFound as exc:
        raise _naming("model", exc) from None
    return job_object(job, jobs)


def _fine_tune_file(jobs: JobsService, param: str, file_id: str) -> UploadedFile:
    """The uploaded file a job body names in `param`; 404 or 400 naming `param` if it is none, or not for fine-tuning."""
    try:
        record = jobs.get_file(file_id)
    except NotFound as exc:
        raise _naming(param, exc) from None
    if record.purpose != FILE_PURPOSE:
        raise bad_param(param, f"{param}={shown(record.id)} has purpose {record.purpose!r}, not {FILE_PURPOSE!r}")
    return record


def _naming(param: str, exc: LoradockError) -> LoradockError:
    """`exc` again, its message and OpenAI's `param` naming the body field whose value it is about."""
    error = type(exc)(f"{param}: {exc}")
    error.param = param
    return error


def cancel(jobs: JobsService, job_id: str, caller: Identity) -> dict:
    job = jobs.cancel(job_id, caller)
    return job_object(job, jobs)


def job_page(jobs: JobsService, after: str | None, limit: int, metadata: dict[str, str]) -> dict:
    """Jobs newest first, those whose metadata has every `metadata[key]=value` asked for, a page after job `after`."""
    def asked_for(job: Job) -> bool:
        return all((job.extra.get("openai", {}).get("metadata") or {}).get(k) == v for k, v in metadata.items())

    try:
        page, has_more = jobs.page(after, limit, asked_for)
    except (NotFound, InvalidInput):
        raise bad_param("after", f"after={shown(after)}: no job with this id in the list") from None
    return _list([job_object(j, jobs) for j in page], has_more)


def _held_out_name(job: Job) -> str | None:
    """A job submitted another way with held-out data (`test_datasets`): its first held-out file's name."""
    return next((d["name"] for d in job.datasets if d.get("split") == "test"), None)


def job_object(job: Job, jobs: JobsService) -> dict:
    """OpenAI's `fine_tuning.job` for a job of the queue (one submitted another way shows its first dataset's name)."""
    asked = job.extra.get("openai", {})
    hyperparameters = _hyperparameters(job.config)
    eta = job.eta_s
    error = {"code": "training_failed", "message": job.error or "the job failed", "param": None} \
        if job.state == "failed" else None
    return {
        "object": "fine_tuning.job", "id": job.id, "created_at": epoch(job.created_at), "finished_at": epoch(job.finished_at),
        "model": job.base, "fine_tuned_model": job.result_version, "organization_id": ORGANIZATION, "status": job.state,
        "training_file": asked.get("training_file") or (job.datasets[0]["name"] if job.datasets else ""),
        "validation_file": asked.get("validation_file") or _held_out_name(job), "hyperparameters": hyperparameters,
        "method": {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}},
        "result_files": [], "seed": job.config.get("seed"), "trained_tokens": trained_tokens(job, jobs), "error": error,
        "estimated_finish": int(time.time() + eta) if eta is not None else None,
        "integrations": asked.get("integrations") or None, "metadata": asked.get("metadata"),
        "user_provided_suffix": asked.get("suffix"),
        "loradock": {"adapter": job.adapter, "step": job.step, "total_steps": job.total_steps, "progress": job.progress,
                     "metrics": job.metrics, "attempts": job.attempts, "max_attempts": job.max_attempts,
                     "cancel_requested": job.cancel_requested, "submitter": job.submitter, "source": job.source,
                     "device_hours": round(job.device_hours, 6), "cost": job.extra.get("cost")},
    }


def _hyperparameters(config: dict) -> dict:
    """The job's training keys as OpenAI's hyperparameters (a batch is what one optimizer step sees)."""
    epochs = config.get("num_epochs")
    return {"n_epochs": int(epochs) if isinstance(epochs, float) and epochs.is_integer() else epochs,
            "batch_size": (config.get("micro_batch_size") or 0) * (config.get("gradient_accumulation_steps") or 1),
            "learning_rate_multiplier": round(config.get("learning_rate", DEFAULT_LEARNING_RATE) / DEFAULT_LEARNING_RATE, 6)}


def trained_tokens(job: Job, jobs: JobsService) -> int | None:
    """Tokens of the training split times the epochs, from the run's lineage (None until the job succeeded)."""
    if job.state != "succeeded" or not job.run_id or (job.config.get("max_steps") or 0) > 0:
        return None
    run = jobs.registry.run(job.run_id) or {}
    counts = next((d["counts"] for d in reversed(run.get("datasets") or []) if isinstance(d.get("counts"), dict)), None)
    if counts is None:
        return None
    tokens = (counts.get("prompt_tokens") or 0) + (counts.get("response_tokens") or 0)
    return int(tokens * (job.config.get("num_epochs") or 1))


# --- events and checkpoints ---------------------------------------------------------------------------------------------


def event_page(jobs: JobsService, job_id: str, after: str | None, limit: int) -> dict:
    """The job's events newest first, as OpenAI lists them: a page of those older than event `after`."""
    before = _cursor_number(after, "ftevent-", job_id, "event") if after is not None else None
    events = jobs.newest_events(job_id, limit, before=before)  # one read: `limit` is at most a page (list_events)
    # Events are numbered 1, 2, 3... per job without gaps: older ones remain unless this page reached number 1.
    return _list([event_object(job_id, e) for e in reversed(events)], bool(events) and events[0].seq > 1)


def event_object(job_id: str, event: JobEvent) -> dict:
    data = dict(event.data)
    if event.type == "metrics":
        data.update({openai: data[ours] for ours, openai in METRIC_NAMES.items() if ours in data})
    return {"object": "fine_tuning.job.event", "id": _cursor("ftevent-", job_id, event.seq), "created_at": epoch(event.at),
            "level": event.level, "message": event.message, "data": data,
            "type": event.type if event.type in OPENAI_EVENT_TYPES else "message"}


def checkpoint_page(jobs: JobsService, job_id: str, after: str | None, limit: int) -> dict:
    """The job's checkpoints, newest first; a page of those before checkpoint `after`."""
    job = jobs.get(job_id)
    found = sorted(jobs.checkpoints(job_id), key=lambda c: c.step, reverse=True)
    page, has_more = _page(found, [_cursor("ftckpt-", job_id, c.step) for c in found], after, limit, "checkpoint")
    return _list([checkpoint_object(job, c) for c in page], has_more)


def checkpoint_object(job: Job, checkpoint: Checkpoint) -> dict:
    """A checkpoint is servable once pushed as a version (`reg job push-checkpoint`); until then its name is a label."""
    metrics = {"step": checkpoint.step, **{openai: checkpoint.metrics[ours] for ours, openai in METRIC_NAMES.items()
                                           if ours in checkpoint.metrics}}
    return {"object": "fine_tuning.job.checkpoint", "id": _cursor("ftckpt-", job.id, checkpoint.step),
            "created_at": epoch(checkpoint.at), "fine_tuned_model_checkpoint": f"{job.adapter}:step-{checkpoint.step}",
            "fine_tuning_job_id": job.id, "step_number": checkpoint.step, "metrics": metrics,
            "loradock": {"present": checkpoint.present,
                         "push": f"reg job push-checkpoint {job.id} {checkpoint.step}" if checkpoint.present else None}}


# --- pages ------------------------------------------------------------------------------------------------------------


def _cursor(prefix: str, job_id: str, number: int) -> str:
    return f"{prefix}{job_id.removeprefix('ftjob-')}-{number}"


def _cursor_number(cursor: str, prefix: str, job_id: str, what: str) -> int:
    head = _cursor(prefix, job_id, 0)[:-1]
    number = cursor.removeprefix(head)
    if not cursor.startswith(head) or not number.isascii() or not number.isdigit():
        raise bad_param("after", f"after={shown(cursor)}: not an {what} id of job {job_id} ({head}N)")
    return int(number)


def _page(items: list, ids: list[str], after: str | None, limit: int, what: str) -> tuple[list, bool]:
    """The `limit` items that follow the one whose id is `after` (from the first without it), and whether more follow."""
    start = 0
    if after is not None:
        if after not in ids:
            raise bad_param("after", f"after={shown(after)}: no {what} with this id in the list")
        start = ids.index(after) + 1
    return items[start:start + limit], len(items) > start + limit


def _list(data: list[dict], has_more: bool) -> dict:
    return {"object": "list", "data": data, "has_more": has_more,
            "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None}


ROUTES = [  # (method, path template as ROLE_FOR_ROUTE names it, handler)
    ("POST", "/v1/files", create_file),
    ("GET", "/v1/files", list_files),
    ("GET", "/v1/files/{file_id}", retrieve_file),
    ("GET", "/v1/files/{file_id}/content", file_content),
    ("POST", "/v1/fine_tuning/jobs", create_job),
    ("GET", "/v1/fine_tuning/jobs", list_jobs),
    ("GET", "/v1/fine_tuning/jobs/{job_id}", retrieve_job),
    ("POST", "/v1/fine_tuning/jobs/{job_id}/cancel", cancel_job),
    ("GET", "/v1/fine_tuning/jobs/{job_id}/events", list_events),
    ("GET", "/v1/fine_tuning/jobs/{job_id}/checkpoints", list_checkpoints),
]


def add_routes(app: FastAPI) -> None:
    """Declare the routes on `app` itself (not through an included router), so `app.routes` lists every one."""
    for method, path, handler in ROUTES:
        app.add_api_route(path, handler, methods=[method])
