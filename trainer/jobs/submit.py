"""Checking a fine-tuning job before it is queued: the same checks `reg train` makes, and whether any worker fits it.

`check_submission` refuses, with one line naming the key, file and line or value, a config with a bad key,
a dataset with a bad line, a base that is not registered, or a job whose `reg plan` memory estimate fits
no live worker; nothing is stored then. What passes becomes a `JobSpec`: the resolved config frozen with
its datasets replaced by their blobs, so later edits of the YAML or the data change nothing. The CLI, the
gRPC Jobs service and the OpenAI-compatible HTTP API all submit through `submit`.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import yaml

from registry.errors import InvalidInput, LoradockError, shown
from registry.jobs import Job, JobSpec, SubmitRequest
from registry.db import utcnow
from registry.home import current_actor
from registry.jobs.queue import check_executor, fit_problem
from registry.jobs.records import DatasetFile
from registry.names import validate_name

MAX_PROCESSES = 64
MAX_ATTEMPTS = 100


class Unschedulable(LoradockError):
    """A job that no live worker could ever run (its memory estimate or GPU count is beyond every one of them)."""

    exit_code, grpc_status, http_status = 2, "FAILED_PRECONDITION", 400


MAX_SUBMITTED_BYTES = 64 * 2**20  # config and datasets sent with one remote submission


def submit(registry, request: SubmitRequest, submitter: str | None = None) -> Job:
    """Check `request` and queue it; returns the queued job.

    On a remote registry the request goes with its config and dataset files to the server, which checks it
    with this same function against its own registry.
    """
    if not registry.is_local:
        _refuse_remote_executor(request)
        return registry.jobs.submit_request(with_files(request))
    with tempfile.TemporaryDirectory(prefix="loradock-submit-") as tmp:
        spec = check_submission(registry, request, Path(tmp))
        return registry.jobs.submit(spec, submitter=submitter)


def preview(registry, request: SubmitRequest) -> Job:
    """The job `submit` would queue, checked the same way but stored nowhere (`reg job submit --dry-run`); its id is
    a placeholder, `DRY_RUN_JOB_ID`."""
    if not registry.is_local:
        _refuse_remote_executor(request)
    with tempfile.TemporaryDirectory(prefix="loradock-preview-") as tmp:
        spec = check_submission(registry, request, Path(tmp))
    datasets = [{"name": d.name, "type": d.type, "sha256": d.sha256, "bytes": d.bytes, "lines": d.lines,
                 "split": d.split} for d in spec.datasets]
    return Job(id=DRY_RUN_JOB_ID, adapter=spec.adapter, state="queued", config=spec.config, config_hash=spec.config_hash,
               base=spec.base, datasets=datasets, priority=spec.priority, resources=spec.resources,
               submitter=current_actor(), source=spec.source, created_at=utcnow(), started_at=None, finished_at=None,
               attempts=0, max_attempts=spec.max_attempts, worker_id=None, lease_expires=None, cancel_requested=False,
               run_id=None, result_version=None, error=None, step=0, total_steps=0, metrics={}, device=None,
               device_count=0, device_seconds=0.0, extra=spec.extra, executor=spec.executor)


DRY_RUN_JOB_ID = "ftjob-dryrun"  # what a previewed job is called: a valid id that no submitted job has


def _refuse_remote_executor(request: SubmitRequest) -> None:
    """An external executor's job is launched by the process that queues it, which must be the registry's host: a
    remote registry records no executor handle, and a job queued there for one would wait for a worker never started."""
    if request.executor != "local":
        raise InvalidInput(f"executor {request.executor}: a job for an external executor is submitted on the registry's "
                           f"host (e.g. `kubectl exec` into the registry pod), where it is launched; over --registry "
                           f"only local jobs are queued")


def with_files(request: SubmitRequest) -> SubmitRequest:
    """A request for a config file on this machine as one a server can check: the YAML's mapping and its datasets' bytes."""
    from ..config import ConfigError, dataset_entries, read_config_file

    if not request.config_path:
        return request
    path = Path(request.config_path)
    raw = read_config_file(path)
    files, total = {}, 0
    for key, entry in dataset_entries(raw):
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            raise ConfigError(f"{key}: expected {{path, type}}, got {shown(entry)}")
        local = (path.parent / entry["path"]).expanduser()
        if not local.is_file():
            raise ConfigError(f"{key}.path: dataset file not found: {entry['path']} (looked for {local.resolve()})")
        total += local.stat().st_size
        if total > MAX_SUBMITTED_BYTES:
            raise InvalidInput(f"the datasets of {path} add up to more than {MAX_SUBMITTED_BYTES >> 20} MiB, the most one "
                               f"remote submission carries; submit on the registry's host")
        files[entry["path"]] = local.read_bytes()
    return SubmitRequest(config=raw, name=request.name, overrides=request.overrides, files=files,
                         priority=request.priority, gpus=request.gpus, num_processes=request.num_processes,
                         max_attempts=request.max_attempts, source=request.source, extra=request.extra)


def check_dataset(path: Path, dataset_type: str) -> int:
    """Validate one JSONL dataset file line by line as the trainer reads it; returns its line count."""
    from ..data import DatasetSpec, load_datasets

    return load_datasets([DatasetSpec(str(path), dataset_type)]).files[0]["lines"]


def preview_dataset(path: Path, dataset_type: str, rows: int = 5) -> dict:
    """What a dataset holds, as the trainer reads it, without refusing it: its line counts, every bad line
    (`file:line: what is wrong`), exact and near duplicates, and its first `rows` examples (the portal's preview)."""
    from ..data import DatasetSpec, deduplicate, load_datasets

    report = load_datasets([DatasetSpec(str(path), dataset_type)], skip_bad_lines=True)
    dedup = deduplicate(report.examples)
    info = report.files[0]
    first = [{"prompt": "\n".join(f"{m['role']}: {m['content']}" for m in e.messages) if e.raw_prompt is None
              else e.raw_prompt, "response": e.response} for e in report.examples[:rows]]
    return {"lines": info["lines"], "valid": info["valid"], "bad_lines": report.bad_lines,
            "exact_duplicates": dedup.exact_duplicates, "near_duplicates": dedup.near_duplicates, "first": first}


def check_submission(registry, request: SubmitRequest, workdir: Path) -> JobSpec:
    """The checked `JobSpec` for `request` (files it carries are written under `workdir` to be read)."""
    from ..config import ConfigError, load_config, resolved_config_hash
    from ..data import DatasetSpec, load_datasets
    from ..tracking import check_trackers

    _check_numbers(request)
    config_path = _config_file(request, workdir)
    config = load_config(config_path, request.overrides)
    if request.name and not _sets_push_name(request):
        config.push.name = validate_name(request.name)
    if config.output_dir:
        raise ConfigError(f"output_dir {shown(config.output_dir)}: a job's run directory is chosen by its worker; remove the key")
    check_trackers(config)
    entries = [("train", d) for d in config.datasets] + [("test", d) for d in config.test_datasets]
    report = load_datasets([DatasetSpec(d.path, d.type) for _, d in entries])
    base = registry.get_base(config.base_model)
    if config.lora_from_version:  # refused here, not on the worker: the version must exist, on this base
        version = registry.resolve(config.lora_from_version)
        if version.base_name != base.name:
            raise ConfigError(f"lora_from_version {config.lora_from_version!r}: {version.ref} was trained on base "
                              f"{version.base_name!r}, not {base.name!r}")
    datasets = [DatasetFile(Path(d.path).name if request.config_path else _submitted_name(request, i), d.type,
                            info["sha256"].removeprefix("sha256:"), Path(d.path).stat().st_size, info["lines"], split,
                            Path(d.path))
                for i, ((split, d), info) in enumerate(zip(entries, report.files))]
    frozen = config.resolved()
    for entry, ds in zip(frozen["datasets"] + frozen["test_datasets"], datasets):
        entry["path"] = f"blob:{ds.sha256}"
    resources = {"memory_bytes": _memory_estimate(config, base), "gpus": request.gpus,
                 "num_processes": request.num_processes}
    # an external executor's job runs on what its executor provides, not on one of the workers polling the queue
    warnings = _check_fits_a_worker(registry, resources) if request.executor == "local" else []
    return JobSpec(adapter=config.push.name, config=frozen, config_hash=resolved_config_hash(frozen), base=base.name,
                   datasets=datasets, priority=request.priority, resources=resources, max_attempts=request.max_attempts,
                   source=request.source, extra={**request.extra, "config_name": request.name}, warnings=warnings,
                   executor=request.executor)


def _check_numbers(request: SubmitRequest) -> None:
    check_executor(request.executor)
    if not isinstance(request.priority, int):
        raise InvalidInput(f"priority {shown(request.priority)}: expected an integer")
    if not 0 <= request.gpus <= MAX_PROCESSES:
        raise InvalidInput(f"gpus {request.gpus}: expected 0 (any device) to {MAX_PROCESSES}")
    if not 1 <= request.num_processes <= MAX_PROCESSES:
        raise InvalidInput(f"num_processes {request.num_processes}: expected 1 to {MAX_PROCESSES}")
    if not 1 <= request.max_attempts <= MAX_ATTEMPTS:
        raise InvalidInput(f"max_attempts {request.max_attempts}: expected 1 to {MAX_ATTEMPTS}")


def _config_file(request: SubmitRequest, workdir: Path) -> Path:
    """The config to load: the caller's own file, or the submitted mapping written out beside its datasets."""
    from ..config import dataset_entries

    if request.config_path:
        if request.files:
            raise InvalidInput("a submission carries either a config path or a config with its files, not both")
        return Path(request.config_path)
    if not isinstance(request.config, dict):
        raise InvalidInput(f"config: expected a mapping of training keys, got {type(request.config).__name__}")
    config = json.loads(json.dumps(request.config))  # a copy, and plain JSON types only
    datasets = config.get("datasets")
    if not isinstance(datasets, list) or not datasets:
        raise InvalidInput("datasets: a job needs at least one dataset ({path, type}) with its file")
    for i, (key, entry) in enumerate(dataset_entries(config)):
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            raise InvalidInput(f"{key}: expected {{path, type}}, got {shown(entry)}")
        if entry["path"] not in request.files:
            raise InvalidInput(f"{key}.path {shown(entry['path'])}: its file was not sent with the job")
        # never the submitted path (it names nothing on this machine), but its file name, so a refusal names the file
        local = workdir / str(i) / _local_name(entry["path"], i)
        local.parent.mkdir()
        local.write_bytes(request.files[entry["path"]])
        entry["path"] = str(local.relative_to(workdir))
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _sets_push_name(request: SubmitRequest) -> bool:
    from ..config import read_config_file

    raw = read_config_file(Path(request.config_path)) if request.config_path else request.config or {}
    push = raw.get("push")
    named_by_override = any(o.split("=", 1)[0].strip() == "push.name" for o in request.overrides)
    return named_by_override or (isinstance(push, dict) and bool(push.get("name")))


def _local_name(submitted: str, i: int) -> str:
    """The submitted dataset path's file name, to write its bytes under (`dataset-I.jsonl` if it has no usable one)."""
    name = Path(submitted).name
    usable = name not in ("", ".", "..") and "\0" not in name and len(name.encode()) <= 200
    return name if usable else f"dataset-{i}.jsonl"


def _submitted_name(request: SubmitRequest, i: int) -> str:
    """The file name the submitter gave its `i`-th dataset (training data first, then held-out data)."""
    from ..config import dataset_entries

    return Path(str(dataset_entries(request.config)[i][1]["path"])).name[:200]


def plan_submission(registry, request: SubmitRequest) -> dict:
    """`reg plan` for the job `request` would queue, before it is submitted (the portal's New-job form shows it):
    the memory estimate by component, GPU types that fit it with their price, and what the live workers say.

    The config is loaded and checked as `check_submission` loads it (a bad key or value is its one-line error);
    the datasets are not read."""
    from ..config import load_config
    from ..plan import plan

    with tempfile.TemporaryDirectory(prefix="loradock-plan-") as tmp:
        config = load_config(_config_file(request, Path(tmp)), request.overrides)
    base = registry.get_base(config.base_model)
    shape, method, settings = _plan_inputs(config, base)
    result = plan(shape, methods=(method,), **settings)
    numbers = result["methods"][method]
    workers = registry.jobs.live_workers()
    resources = {"memory_bytes": numbers["memory"]["total"], "gpus": request.gpus, "num_processes": request.num_processes}
    fits = [w.id for w in workers if not fit_problem(resources, w.resources)]
    return {"method": method, "adapter": config.adapter, "settings": result["settings"], "memory": numbers["memory"],
            "trainable_params": numbers["trainable_params"], "notes": numbers["notes"],
            "recommendations": numbers["recommendations"][:PLAN_GPUS_SHOWN], "live_workers": len(workers),
            "fitting_workers": fits}


PLAN_GPUS_SHOWN = 5  # the cheapest GPU types a pre-submit plan lists


def _plan_inputs(config, base) -> tuple:
    """The planner's (shape, method, settings) for a job's config on its base; PlanError where it cannot tell."""
    from ..plan_inputs import shape_from_config

    method = "qlora" if config.load_in_4bit else "lora"
    settings = {"rank": config.lora_r, "seq": config.sequence_len, "batch": config.micro_batch_size,
                "gradient_checkpointing": config.gradient_checkpointing}
    return shape_from_config(base.config, name=base.name), method, settings


def _memory_estimate(config, base) -> int:
    """`reg plan`'s peak-memory estimate for this config on this base, in bytes (0 where the planner cannot tell)."""
    from ..plan import estimate
    from ..plan_inputs import PlanError

    try:
        shape, method, settings = _plan_inputs(config, base)
        return estimate(shape, method, **settings).total
    except PlanError:
        return 0


def _check_fits_a_worker(registry, resources: dict) -> list[str]:
    """Refuse a job no live worker could run; warn (and queue it) when no worker is running at all."""
    workers = registry.jobs.live_workers()
    if not workers:
        return ["no worker is running: the job waits in the queue until one starts (`reg worker`)"]
    problems = [(w, fit_problem(resources, w.resources)) for w in workers]
    if all(problem for _, problem in problems):
        worker, problem = problems[0]
        raise Unschedulable(f"no live worker can run this job: {problem} (worker {worker.id}"
                            + (f", and {len(workers) - 1} more" if len(workers) > 1 else "")
                            + "); lower sequence_len or micro_batch_size, use load_in_4bit, or start a bigger worker")
    return []


