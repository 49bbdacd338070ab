"""`reg export`: adapter versions merged into a full-precision copy of their base and saved as a model
directory that plain transformers, vLLM or TGI load, or saved as a plain PEFT directory.

    validate   every flag, --out, the refs, one common base, the base's bytes   (nothing written yet)
    combine    pull each version (digest-verified); one as it is, or several with `merge_adapters`,
               the same merge math as the server's per-request merges
    write      merged: B @ A * scaling folded into the fp32 base weights, cast to --dtype, saved in
               safetensors shards with the tokenizer, chat template and generation config;
               peft: the adapter's own files (a merge: `write_lora_adapter` of the merged adapter)
    check      fidelity.py on the files just written, against the base plus the unmerged adapter
    publish    README.md model card and loradock_export.json; rename into --out; record the export;
               optionally upload with huggingface_hub

Everything is written into a hidden sibling of --out and renamed into place only after the check
passed, so --out never holds a half-written or unchecked export. A failed check removes what was
written and records the failure.
"""

from __future__ import annotations

import logging
import importlib.metadata
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from ..bases import Base, describe_base_dir
from ..blobs import replace_dir, sha256_file
from ..db import utcnow
from ..errors import BaseMismatch, Conflict, IntegrityError, InvalidInput, LoradockError
from ..modeling.merge import MERGE_METHODS, check_merge_options, merge_key
from ..names import parse_ref
from ..paths import check_replaceable
from ..records import Version
from ..store import Registry
from ..units import parse_size
from . import records as export_records
from .card import render_card
from .fidelity import FidelityReport, ProbeSet, builtin_probes, compare_logits, logits_of, probe_token_ids
from .records import EXPORT_FORMATS

logger = logging.getLogger(__name__)

DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
DEFAULT_METHOD = "cat"  # as for the server's per-request merges: the exact weighted sum, any ranks
DEFAULT_MAX_SHARD_SIZE = "2GB"
RECORD_FILE = "loradock_export.json"
CARD_FILE = "README.md"
HUB_REPO_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")

class ExportError(LoradockError):
    """An export that could not be completed."""


class FidelityError(ExportError):
    """The exported model does not compute what the base plus the unmerged adapter computes."""


class HubUploadError(ExportError):
    """`--hub-repo`: the hub is unreachable or switched off, there is no token, or the upload failed."""


@dataclass
class ExportRequest:
    """What to export and where. `validate()` checks every field before anything is read or written."""

    sources: list[tuple[str, float]]
    """(ref, weight) pairs: `reg export REF` is [(REF, 1.0)]; each `--merge REF=WEIGHT` adds one."""
    out: Path
    """The output directory; refused if it exists and is not empty, unless `force`."""
    method: str = DEFAULT_METHOD
    """How several adapters (or one with a weight other than 1) are combined: one of registry.modeling.merge.MERGE_METHODS."""
    density: float | None = None
    """ties, dare_* and magnitude_prune: the fraction of values kept (0 < density <= 1); they need it."""
    majority_sign_method: str = "total"
    """ties and dare_ties: how the sign of each entry is elected, `total` or `frequency`."""
    fmt: str = "merged"
    """`merged`: a full model directory; `peft`: a plain PEFT adapter directory."""
    dtype: str = "auto"
    """Weights of a merged export: fp32, fp16, bf16, or auto (the base's own dtype)."""
    max_shard_size: str = DEFAULT_MAX_SHARD_SIZE
    """Largest safetensors shard of a merged export (e.g. 2GB, 500MB, 1GiB); larger models get an index."""
    force: bool = False
    """Replace a non-empty output directory (swapped in only after the fidelity check passed)."""
    hub_repo: str | None = None
    """ORG/NAME on the Hugging Face Hub to upload the result to (needs network access and a token)."""
    actor: str | None = None
    """Who the export is recorded as (None: this machine's user, as for `reg push`); the portal's signed-in token."""

    @property
    def is_merge(self) -> bool:
        return len(self.sources) > 1 or self.sources[0][1] != 1.0

    def validate(self) -> None:
        if not self.sources:
            raise InvalidInput("nothing to export: give REF, or --merge REF=WEIGHT (repeatable)")
        for ref, weight in self.sources:
            parse_ref(ref)
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight == 0:
                raise InvalidInput(f"--merge {ref}={weight}: the weight must be a non-zero finite number")
        if self.method not in MERGE_METHODS:
            raise InvalidInput(f"--method {self.method!r}: use one of {', '.join(MERGE_METHODS)}")
        check_merge_options(self.method, len(self.sources), self.density, self.majority_sign_method,
                            ("--method", "--density", "--majority-sign-method"))
        if self.fmt not in EXPORT_FORMATS:
            raise InvalidInput(f"--format {self.fmt!r}: use one of {', '.join(EXPORT_FORMATS)}")
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise InvalidInput(f"--dtype {self.dtype!r}: use one of {', '.join(DTYPES)} (or auto: the base's own)")
        if self.fmt == "peft" and self.dtype != "auto":
            raise InvalidInput(f"--dtype {self.dtype} applies to --format merged; "
                               "a PEFT directory keeps the adapter's own tensors")
        parse_size(self.max_shard_size, "--max-shard-size")
        if self.hub_repo is not None and not HUB_REPO_PATTERN.fullmatch(self.hub_repo):
            raise InvalidInput(f"--hub-repo {self.hub_repo!r}: expected ORG/NAME, e.g. my-org/arith-merged")
        check_output_dir(Path(self.out), self.force)


@dataclass
class ExportResult:
    export_id: int
    out: str
    format: str
    dtype: str
    method: str | None
    sources: list[dict]
    base: str
    files: list[dict]
    fidelity: dict
    hub_url: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def parse_weighted_ref(text: str) -> tuple[str, float]:
    """`REF=WEIGHT` (one `--merge` value) -> (ref, weight)."""
    ref, sep, weight = text.rpartition("=")
    if not sep or not ref:
        raise InvalidInput(f"--merge {text!r}: expected REF=WEIGHT, e.g. arith:3=0.7")
    try:
        return ref, float(weight)
    except ValueError:
        raise InvalidInput(f"--merge {text!r}: the weight {weight!r} is not a number") from None


def check_output_dir(out: Path, force: bool) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise Conflict(f"--out {out} exists and is not empty; choose another directory or pass --force")


# --- the export ---------------------------------------------------------------------------------


def export(
    registry: Registry,
    request: ExportRequest,
    find_probes: Callable[[list[Version]], tuple[list[dict], str]] | None = None,
    tamper: Callable[[object], None] | None = None,
) -> ExportResult:
    """Export as `request` says; see the module docstring for the steps.

    `find_probes(versions) -> (probes, description)` supplies fidelity probes from the versions' held-out data
    (the CLI passes `trainer.heldout.held_out_probes`); without it, or when it finds none (the description
    then says why), the built-in probes are used. `tamper(model)` is called on the merged full-precision
    model just before it is saved (merged format only): tests use it to break a merge on purpose and prove
    that the fidelity check catches it.
    """
    request.validate()
    out = Path(request.out)
    sources = [(registry.resolve(ref), float(weight)) for ref, weight in request.sources]
    base = _common_base(registry, [v for v, _ in sources])
    _check_not_replacing(out, base, registry)
    if request.hub_repo:
        check_hub_ready(request.hub_repo)
    logger.info(f"verifying the weight files of base {base.name} ...")
    _verify_base_files(base)
    dtype = _export_dtype(request, base)
    probes = _probe_set(find_probes, [v for v, _ in sources])

    with tempfile.TemporaryDirectory(prefix="loradock-export-") as work:
        adapter_dir, tensors = _combine(registry, request, sources, base, Path(work))
        staging = _staging_dir(out)
        try:
            if request.fmt == "merged":
                _write_merged(base, tensors, dtype, staging, parse_size(request.max_shard_size, "--max-shard-size"), tamper)
            else:
                _write_peft(adapter_dir, staging)
            report = _check_fidelity(base, adapter_dir, staging, request.fmt, dtype, probes)
            if report.passed:
                files = _write_provenance(staging, _facts(registry, request, sources, base, dtype, report))
                replace_dir(staging, out, registry.home)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    if not report.passed:
        export_id = _record(registry, request, sources, base, dtype, out, report, files=[])
        raise FidelityError(
            f"fidelity check failed for {_label(request, sources)}: {report.reason}; nothing was written to {out} "
            f"(recorded as failed export {export_id})"
        )
    export_id = _record(registry, request, sources, base, dtype, out, report, files)
    logger.info(f"fidelity check passed: max |logit difference| {report.max_abs_diff:.3g} (tolerance {report.tolerance:g}), "
        f"top-1 agreement {report.top1_agreement:.1%} on {report.positions - report.near_ties} positions")
    result = ExportResult(export_id, str(out), request.fmt, dtype, _method(request), [_source_row(v, w) for v, w in sources],
                          base.name, files, report.to_dict())
    if request.hub_repo:
        logger.info(f"uploading {out} to the Hugging Face Hub as {request.hub_repo} ...")
        result.hub_url = upload_to_hub(out, request.hub_repo)
        export_records.set_hub_repo(registry.conn, export_id, request.hub_repo)
    return result


def _record(registry: Registry, request: ExportRequest, sources, base: Base, dtype: str, out: Path,
            report: FidelityReport, files: list[dict]) -> int:
    return registry.record_export(
        [_source_row(v, w) for v, w in sources], method=_method(request), fmt=request.fmt, dtype=dtype,
        out_path=str(out.resolve()), base_name=base.name, base_digest=base.weights_digest, files=files,
        fidelity=report.to_dict(), status="passed" if report.passed else "failed", reason=report.reason,
        actor=request.actor,
    )


def _method(request: ExportRequest) -> str:
    """The merge method used: none for one version as it is; linear for one weighted version (as PEFT does)."""
    if not request.is_merge:
        return "none"
    return "linear" if len(request.sources) == 1 else request.method


def _label(request: ExportRequest, sources: list[tuple[Version, float]]) -> str:
    if not request.is_merge:
        return sources[0][0].ref
    return merge_key([(v.ref, w) for v, w in sources], request.method, density=request.density,
                     majority_sign_method=request.majority_sign_method)


def _probe_set(find_probes, versions: list[Version]) -> ProbeSet:
    if find_probes is None:
        return builtin_probes()
    probes, description = find_probes(versions)
    return ProbeSet(probes, description) if probes else builtin_probes(why=description)


def _source_row(version: Version, weight: float) -> dict:
    return {"version_id": version.id, "ref": version.ref, "weight": weight, "manifest_digest": version.manifest_digest}


# --- checks before anything is written ------------------------------------------------------------


def _common_base(registry: Registry, versions: list[Version]) -> Base:
    if len({v.base_digest for v in versions}) > 1:
        listing = ", ".join(f"{v.ref} on {v.base_name} ({v.base_digest[:19]})" for v in versions)
        raise BaseMismatch(f"the adapters were trained on different bases ({listing}); only adapters of one base can be merged")
    base = registry.get_base(versions[0].base_name)
    if base.weights_digest != versions[0].base_digest:
        raise BaseMismatch(
            f"{versions[0].ref} was trained on base weights {versions[0].base_digest[:19]}, but the base registered as "
            f"{base.name} now has {base.weights_digest[:19]}"
        )
    return base


def _check_not_replacing(out: Path, base: Base, registry: Registry) -> None:
    if os.path.lexists(out):
        check_replaceable(out, registry.home)  # not the home, inside it or above it (registry/paths.py)
    target, protected = out.resolve(), Path(base.path).resolve()
    if target == protected or target in protected.parents:
        raise Conflict(f"--out {out} would replace base {base.name} at {protected}; choose another directory")


def _verify_base_files(base: Base) -> None:
    digest = describe_base_dir(Path(base.path))["weights_digest"]
    if digest != base.weights_digest:
        raise IntegrityError(
            f"the weight files of base {base.name} at {base.path} hash to {digest}, not the registered "
            f"{base.weights_digest}; restore them (or register the changed model as a new base)"
        )


def _export_dtype(request: ExportRequest, base: Base) -> str:
    if request.dtype != "auto":
        return request.dtype
    declared = str(base.config.get("dtype") or base.config.get("torch_dtype") or "float32").removeprefix("torch.")
    return {name: short for short, name in DTYPES.items()}.get(declared, "fp32")


# --- combining and writing ------------------------------------------------------------------------


def _combine(registry: Registry, request: ExportRequest, sources, base: Base, work: Path):
    """(a PEFT directory of the adapter to export, its LoRA tensors; None for a single adapter exported as PEFT)."""
    from ..modeling.lora import read_lora
    from ..modeling.merge import merge_adapters, write_lora_adapter

    pulled = []
    for i, (version, _) in enumerate(sources):
        logger.info(f"pulling {version.ref} (every sha256 verified) ...")
        pulled.append(registry.pull(version.ref, work / f"source-{i}")[1])
    if not request.is_merge:
        return pulled[0], (read_lora(pulled[0], "merge") if request.fmt == "merged" else None)
    logger.info(f"combining {_label(request, sources)} ...")
    merged = merge_adapters([(read_lora(d, "merge"), w) for d, (_, w) in zip(pulled, sources)], request.method,
                            density=request.density, majority_sign_method=request.majority_sign_method)
    base_name_or_path = sources[0][0].adapter_config.get("base_model_name_or_path") or base.hub_id or base.path
    return write_lora_adapter(merged, work / "merged-adapter", base_name_or_path), merged


def _write_merged(base: Base, adapter, dtype: str, staging: Path, max_shard_size: int, tamper) -> None:
    import torch
    from transformers import AutoTokenizer

    from ..modeling.loading import load_base_model
    from ..modeling.merge import fold_lora

    logger.info(f"loading base {base.name} in full precision (never merged into quantized weights) ...")
    model = load_base_model(base, "none", bf16=False).model
    fold_lora(model, adapter)
    if tamper is not None:
        tamper(model)
    logger.info(f"saving the merged model as {dtype} (shards of at most {max_shard_size:,} bytes) ...")
    model.to(getattr(torch, DTYPES[dtype]))
    model.save_pretrained(staging, max_shard_size=max_shard_size)
    AutoTokenizer.from_pretrained(base.path).save_pretrained(staging)  # a fresh copy: the loader sets a pad token


def _write_peft(adapter_dir: Path, staging: Path) -> None:
    staging.mkdir(parents=True)
    for path in sorted(adapter_dir.iterdir()):
        if path.is_file():
            shutil.copy2(path, staging / path.name)


def _check_fidelity(base: Base, adapter_dir: Path, staging: Path, fmt: str, dtype: str, probes: ProbeSet) -> FidelityReport:
    """Logits of the written export vs the base (full precision, cast to `dtype`) plus the unmerged adapter."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from ..modeling.loading import load_base_model, pick_device

    torch_dtype = getattr(torch, DTYPES[dtype])
    loaded = load_base_model(base, "none", bf16=False)
    token_ids = probe_token_ids(loaded.tokenizer, probes)
    logger.info(f"fidelity check: {len(token_ids)} probes from the {probes.source}, {dtype} ...")
    # autocast_adapter_dtype=False: the adapter's weights in `dtype` too, not upcast to fp32 as PEFT does by default.
    reference = PeftModel.from_pretrained(loaded.model.to(torch_dtype), adapter_dir, autocast_adapter_dtype=False).eval()
    expected = logits_of(reference, token_ids)
    if fmt == "merged":
        del reference, loaded  # before the merged copy comes in: one model in memory at a time
        candidate = AutoModelForCausalLM.from_pretrained(staging, dtype=torch_dtype).to(pick_device()).eval()
    else:  # the written adapter on the same base, in place of the source one
        reference.load_adapter(staging, adapter_name="written", autocast_adapter_dtype=False)
        reference.set_adapter("written")
        candidate = reference
    return compare_logits(expected, logits_of(candidate, token_ids), dtype, probes.source)


# --- publishing -----------------------------------------------------------------------------------


def _facts(registry: Registry, request: ExportRequest, sources, base: Base, dtype: str, report: FidelityReport) -> dict:
    """Everything the model card and loradock_export.json say about the export."""
    return {
        "format": request.fmt, "method": _method(request), "dtype": dtype,
        "merge_precision": "float32", "created_at": utcnow(), "tool_versions": _tool_versions(),
        "sources": [
            {
                **_source_row(v, w), "peft_type": v.peft_type, "rank": v.rank, "alpha": v.alpha, "targets": v.target_modules,
                "run_id": v.run_id, "quantization": _training_quantization(registry, v),
                "evaluations": registry.evaluations(v.id),
            }
            for v, w in sources
        ],
        "base": {
            "name": base.name, "hub_id": base.hub_id, "source": base.source, "weights_digest": base.weights_digest,
            "architecture": base.architecture, "num_parameters": base.num_parameters,
        },
        "fidelity": report.to_dict(),
    }


def _training_quantization(registry: Registry, version: Version) -> str:
    """How the base was loaded to train the version: nf4 (QLoRA), int8, or none (also when no run is recorded)."""
    run = registry.run(version.run_id) if version.run_id else None
    config = (run or {}).get("config") or {}
    if config.get("load_in_4bit") or config.get("adapter") == "qlora":
        return "nf4"
    return "int8" if config.get("load_in_8bit") else "none"


def _tool_versions() -> dict[str, str]:
    versions = {}
    for name in ("loradock", "torch", "transformers", "peft"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def _file_digests(directory: Path) -> list[dict]:
    return [
        {"path": p.relative_to(directory).as_posix(), "size": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(directory.rglob("*")) if p.is_file()
    ]


def _staging_dir(out: Path) -> Path:
    """A hidden sibling of `out` (same file system, so the final rename is atomic), empty."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.export-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    return staging


def _write_provenance(staging: Path, facts: dict) -> list[dict]:
    """The model card and loradock_export.json; returns every file's path, size and sha256."""
    (staging / CARD_FILE).write_text(render_card(facts))
    (staging / RECORD_FILE).write_text(json.dumps(facts, indent=2, default=str) + "\n")
    return _file_digests(staging)


# --- the Hugging Face Hub (needs network access and a token; not reachable from the test machines) ----------


def check_hub_ready(repo: str) -> None:
    """Fail before any work when an upload cannot happen: the hub switched off (HF_HUB_OFFLINE) or no token."""
    from huggingface_hub import constants, get_token

    if constants.HF_HUB_OFFLINE:
        raise HubUploadError(f"--hub-repo {repo}: the Hugging Face Hub is switched off here (HF_HUB_OFFLINE=1); "
                             "uploading needs network access (unset HF_HUB_OFFLINE), or upload the directory later")
    if not get_token():
        raise HubUploadError(f"--hub-repo {repo}: no Hugging Face token; run `hf auth login` or set HF_TOKEN "
                             "to a token with write access")


def upload_to_hub(out: Path, repo: str) -> str:
    """Upload the export directory to `repo` (created private if missing); return its URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        url = api.create_repo(repo, exist_ok=True, private=True)
        api.upload_folder(folder_path=str(out), repo_id=repo, commit_message=f"loradock export of {out.name}")
    except Exception as exc:  # huggingface_hub raises many kinds (HTTP, connection, auth); all mean "not uploaded"
        raise HubUploadError(
            f"uploading {out} to {repo} failed ({type(exc).__name__}: {exc}); the export itself is complete in {out} "
            f"and recorded; retry with `hf upload {repo} {out}`"
        ) from None
    return str(url)
