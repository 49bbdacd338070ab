"""One training run: config + data -> a trained adapter, evaluated, pushed with its lineage.

The run directory (`$LORADOCK_HOME/runs/<run id>` unless `output_dir` says otherwise) holds
`run.json` (config, status), `checkpoints/` (resumable), `adapter/` (the result), `metrics.json`
(loss curves, evaluation) and `loss.png`. Under `accelerate launch` every process trains;
only the main one evaluates, records and pushes.
"""

from __future__ import annotations

import logging
import json
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from registry import Registry
from registry.bases import Base
from registry.db import utcnow
from registry.errors import LoradockError

from .config import ConfigError, TrainConfig
from .environment import hardware, library_versions, peak_memory_mb
from .fit import Fitted, fit
from .runs import Heartbeat, process_identity, write_run_json

logger = logging.getLogger(__name__)


class TrainError(LoradockError):
    """A run that cannot start or continue (nothing to resume, no trainable labels...)."""


@dataclass
class TrainResult:
    run_id: str
    run_dir: Path
    version_ref: str | None
    curves: dict
    evaluation: dict | None
    duration_s: float
    seconds_per_step: float
    peak_memory_mb: float
    warnings: list[str] = field(default_factory=list)


# --- base and run directory ------------------------------------------------------------------


def new_run_id(config: TrainConfig) -> str:
    return f"{config.push.name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def find_resumable_run(registry: Registry, config: TrainConfig, run_id: str | None) -> tuple[str, Path]:
    """The run to resume: `run_id` if given, else the newest unfinished run of the same config."""
    candidates = []
    roots = [Path(config.output_dir).parent] if config.output_dir else [registry.runs_dir]
    for root in roots:
        for run_json in root.glob("*/run.json"):
            info = json.loads(run_json.read_text())
            if run_id is not None and info["run_id"] != run_id:
                continue
            if run_id is None and (info.get("config_hash") != config.config_hash() or info.get("status") == "succeeded"):
                continue
            candidates.append((run_json.stat().st_mtime, info["run_id"], run_json.parent))
    if not candidates:
        what = f"run {run_id!r}" if run_id else f"an unfinished run of this config ({config.config_hash()[:19]})"
        raise TrainError(f"nothing to resume: found no {what} under {', '.join(map(str, roots))}")
    _, rid, run_dir = max(candidates)
    return rid, run_dir


# --- the run ---------------------------------------------------------------------------------


def build_peft_config(config: TrainConfig):
    from peft import IA3Config, LoraConfig, PrefixTuningConfig

    targets = config.lora_target_modules
    if config.adapter in ("lora", "qlora", "dora"):
        return LoraConfig(
            r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout, target_modules=targets,
            use_dora=config.adapter == "dora", task_type="CAUSAL_LM",
        )
    if config.adapter == "ia3":
        if targets == "all-linear":
            return IA3Config(task_type="CAUSAL_LM")  # PEFT's per-architecture default: k, v and down projections
        return IA3Config(target_modules=targets, feedforward_modules=[t for t in targets if "down" in t or "mlp" in t],
                         task_type="CAUSAL_LM")
    return PrefixTuningConfig(num_virtual_tokens=config.num_virtual_tokens, task_type="CAUSAL_LM")


@dataclass
class _Prepared:
    """Everything checked and built before a run directory exists: base, data, tokenized features, the PEFT model."""

    base: Base
    report: object
    dedup: object
    val_examples: list
    train_features: list
    val_features: list
    collator: object
    tokenizer: object
    counts: dict
    model: object
    trainable: int
    total: int
    warnings: list[str]


def check_target_modules(model, config: TrainConfig, base_name: str) -> None:
    """Every name in `lora_target_modules` must match a module of the base (PEFT matches by suffix).

    PEFT's own error only comes when none matches, and names no alternatives; a typo in one of
    several names is silently ignored there. The error lists the base's linear module names.
    """
    targets = config.lora_target_modules
    if config.adapter == "prefix" or isinstance(targets, str):
        return
    import torch

    names = [name for name, _ in model.named_modules() if name]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        linear = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                         if isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D"})
        raise ConfigError(f"lora_target_modules: {', '.join(map(repr, missing))} matches no module of base {base_name}; "
                          f"its linear modules are {', '.join(linear)} (or use all-linear)")


def _prepare(config: TrainConfig, registry: Registry, skip_bad_lines: bool) -> _Prepared:
    """Steps 1-3: the base, the data (validated, deduplicated, split, tokenized) and the PEFT model; refuses bad input."""
    from transformers import set_seed

    from registry.modeling.loading import load_base_model

    from . import data as data_mod

    from .tracking import check_trackers

    warnings: list[str] = []
    check_trackers(config)
    base = registry.resolve_base(config.base_model)
    logger.info(f"base {base.name} ({base.weights_digest[:19]}), adapter {config.adapter}, quantization {config.quantization}")
    report, dedup, train_examples, val_examples = _read_datasets(config, skip_bad_lines, warnings)

    set_seed(config.seed)
    loaded = load_base_model(base, config.quantization, bf16=config.bf16, for_training=True)
    tokenizer = loaded.tokenizer
    train_features, prep_stats = data_mod.prepare_features(train_examples, tokenizer, config.sequence_len)
    val_features, _ = data_mod.prepare_features(val_examples, tokenizer, config.sequence_len) if val_examples else ([], {})
    collator = data_mod.CausalCollator(tokenizer.pad_token_id)
    data_mod.check_eos_is_trained(train_features, collator, tokenizer.eos_token_id)
    check_target_modules(loaded.model, config, base.name)
    counts = data_mod.dataset_counts(report, dedup, train_examples, val_examples, prep_stats)
    if counts.get("warning"):
        warnings.append(counts["warning"])
    for w in warnings:
        logger.warning(f"{w}")
    logger.info(f"data: {len(train_features)} train / {len(val_features)} held-out examples "
        f"({dedup.exact_duplicates} exact and {dedup.near_duplicates} near duplicates removed)")
    model, trainable, total = _with_peft(loaded.model, config, registry, base.name)
    return _Prepared(base, report, dedup, val_examples, train_features, val_features, collator, tokenizer, counts, model,
                     trainable, total, warnings)


def _read_datasets(config: TrainConfig, skip_bad_lines: bool, warnings: list[str]):
    """The examples, validated and deduplicated, split by seed (or held out in `test_datasets`); the held-out split
    never reaches the Trainer."""
    from . import data as data_mod

    def load(datasets):
        return data_mod.load_datasets([data_mod.DatasetSpec(d.path, d.type) for d in datasets], skip_bad_lines)

    train_report = load(config.datasets)
    test_report = load(config.test_datasets) if config.test_datasets else None
    report = data_mod.with_test_files(train_report, test_report)
    if report.bad_lines:
        warnings.append(f"skipped {len(report.bad_lines)} bad lines (first: {report.bad_lines[0]})")
    dedup, train_examples, val_examples = data_mod.split_datasets(train_report, test_report, config.val_set_size,
                                                                  config.seed)
    return report, dedup, train_examples, val_examples


def _with_peft(model, config: TrainConfig, registry: Registry, base_name: str):
    """The base wrapped in the config's PEFT adapter, new or (`lora_from_version`) a registered version's weights to
    train further; returns (model, trainable parameters, all parameters)."""
    import tempfile

    from peft import PeftModel, get_peft_model

    if config.lora_from_version:
        version = registry.resolve(config.lora_from_version)
        if version.base_name != base_name:
            raise ConfigError(f"lora_from_version {config.lora_from_version!r}: {version.ref} was trained on base "
                              f"{version.base_name!r}, not {base_name!r}")
        with tempfile.TemporaryDirectory(prefix="loradock-continue-") as tmp:
            _, adapter_dir = registry.pull(version.ref, Path(tmp) / "adapter")
            model = PeftModel.from_pretrained(model, adapter_dir, is_trainable=True)
        logger.info(f"continuing from {version.ref}'s weights")
    else:
        model = get_peft_model(model, build_peft_config(config))
    if config.gradient_checkpointing:
        model.enable_input_require_grads()
    trainable, total = model.get_nb_trainable_parameters()
    logger.info(f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.2f} %)")
    return model, trainable, total


def train(
    config: TrainConfig, registry: Registry, resume: bool = False, run_id: str | None = None,
    skip_bad_lines: bool = False, push: bool = True, progress: bool = True, config_path: Path | None = None,
    callbacks: list = (), job_id: str | None = None, publish=None,
) -> TrainResult:
    """Run the whole job; one-line status messages go to the `trainer.train` logger (the CLI shows them).

    The version, its run's lineage and its evaluation go to `registry`, or to `publish` (another registry, such
    as the remote one a job came from); the training itself uses `registry` (its base, its runs directory).

    Everything that can refuse the run (config, dataset files and lines, base, target modules) is
    checked before the run directory is made, so a refused run leaves nothing behind. A run that
    fails afterwards is recorded as failed (interrupted for Ctrl-C); one killed outright is found
    abandoned by `reg runs ls` (its process is gone).
    """
    from registry.modeling.loading import quiet_libraries

    quiet_libraries()
    started = time.time()
    is_main = int(os.environ.get("RANK", "0")) == 0
    run_id, run_dir = _choose_run(config, registry, resume, run_id)
    job = _prepare(config, registry, skip_bad_lines)

    run_dir.mkdir(parents=True, exist_ok=True)
    heartbeat = Heartbeat(run_dir) if is_main else None
    try:
        if heartbeat is not None:
            _record_start(run_dir, run_id, config, config_path)
            heartbeat.start()
        return _fit_evaluate_push(job, config, registry, run_id, run_dir, resume, push, progress and is_main, started,
                                  callbacks, job_id, publish)
    except BaseException as exc:
        if heartbeat is not None:
            write_run_json(run_dir, status="interrupted" if isinstance(exc, KeyboardInterrupt) else "failed",
                           finished_at=utcnow(), error=" ".join(str(exc).split())[:500] or type(exc).__name__)
        raise
    finally:
        if heartbeat is not None:
            heartbeat.stop()


def _choose_run(config: TrainConfig, registry: Registry, resume: bool, run_id: str | None) -> tuple[str, Path]:
    """The run id and directory: the run to resume, or a new one (the same on every process)."""
    if resume:
        run_id, run_dir = find_resumable_run(registry, config, run_id)
        logger.info(f"resuming run {run_id} from {run_dir}")
        return run_id, run_dir
    run_id = _same_on_every_process(run_id or os.environ.get("LORADOCK_RUN_ID") or new_run_id(config))
    return run_id, Path(config.output_dir) if config.output_dir else registry.runs_dir / run_id


def _record_start(run_dir: Path, run_id: str, config: TrainConfig, config_path: Path | None) -> None:
    source = {"config_path": str(Path(config_path).resolve())} if config_path else {}
    write_run_json(run_dir, run_id=run_id, config=config.resolved(), config_hash=config.config_hash(), **source,
                   status="running", started_at=utcnow(), finished_at=None, error=None, **process_identity())


def _fit_evaluate_push(
    job: _Prepared, config: TrainConfig, registry: Registry, run_id: str, run_dir: Path, resume: bool, push: bool,
    progress: bool, started: float, callbacks: list = (), job_id: str | None = None, publish=None,
) -> TrainResult:
    """Steps 4-7 once the run directory exists: fit, save and evaluate the adapter, push it, record the run."""
    fitted = fit(job.model, job.train_features, job.val_features, job.collator, config, run_dir, resume, progress,
                 callbacks, run_id=run_id)
    if not fitted.is_main:
        return TrainResult(run_id, run_dir, None, fitted.curves.as_dict(), None, time.time() - started,
                           fitted.seconds_per_step, peak_memory_mb())
    adapter_dir, curve_data, plot_path = _save_adapter(fitted, job.tokenizer, config, run_dir)
    evaluation = _evaluate(fitted.model, job, config, curve_data, progress)
    duration = time.time() - started
    metrics = {**curve_data, "seconds_per_step": fitted.seconds_per_step, "peak_memory_mb": peak_memory_mb(),
               "trainable_parameters": job.trainable, "total_parameters": job.total, "loss_plot": str(plot_path),
               **({"tracking": fitted.tracking} if fitted.tracking else {})}
    (run_dir / "metrics.json").write_text(json.dumps({"curves": metrics, "evaluation": evaluation}, indent=2, default=str))
    version_ref = None
    if push:
        version_ref = _push_version(job, config, publish or registry, run_id, run_dir, adapter_dir, metrics, evaluation,
                                    started, duration, job_id)
    write_run_json(run_dir, status="succeeded", finished_at=utcnow(), version=version_ref, duration_s=duration)
    return TrainResult(run_id, run_dir, version_ref, curve_data, evaluation, duration, fitted.seconds_per_step,
                       peak_memory_mb(), job.warnings)


def _save_adapter(fitted: Fitted, tokenizer, config: TrainConfig, run_dir: Path) -> tuple[Path, dict, Path]:
    """The trained adapter as a PEFT directory, and its loss curves (data and plot); returns (adapter dir, curves, plot)."""
    fitted.model.eval()
    adapter_dir = run_dir / "adapter"
    fitted.model.save_pretrained(adapter_dir)
    tokenizer.save_pretrained(adapter_dir)  # lets `PeftModel` users decode without the base's directory
    curve_data = fitted.curves.as_dict()
    curve_data["train_runtime_s"] = fitted.train_runtime_s
    plot_path = _plot_curves(curve_data, run_dir / "loss.png", title=f"{config.push.name} ({config.adapter})")
    return adapter_dir, curve_data, plot_path


def _evaluate(model, job: _Prepared, config: TrainConfig, curve_data: dict, progress: bool) -> dict:
    from .evaluate import evaluate_run

    logger.info("evaluating on the held-out split (adapter and base) ...")
    return evaluate_run(model, job.tokenizer, job.val_examples, job.val_features, job.collator, config, curve_data,
                        progress=progress)


def _push_version(job: _Prepared, config: TrainConfig, registry: Registry, run_id: str, run_dir: Path, adapter_dir: Path,
                  metrics: dict, evaluation: dict, started: float, duration: float, job_id: str | None = None) -> str:
    """Record the run's lineage, push the adapter as a new version, and record its evaluation; returns the version's ref."""
    files = job.report.files
    registry.record_run(
        run_id, config.push.name, config=config.resolved(), config_hash=config.config_hash(), base=job.base,
        datasets=[{**f, "counts": job.counts} for f in files] if len(files) == 1 else
        [*files, {"path": "(all files)", "counts": job.counts}],
        seed=config.seed, libraries=library_versions(),
        hardware={**hardware(), "processes": int(os.environ.get("WORLD_SIZE", "1"))}, metrics=metrics,
        started_at=time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(started)), finished_at=utcnow(),
        duration_s=duration, run_dir=str(run_dir), job_id=job_id,
    )
    message = config.push.message or f"trained by {run_id}"
    result = registry.push(adapter_dir, config.push.name, base=job.base.name, message=message, alias=config.push.alias,
                           run_id=run_id, allow_duplicate=True, parent=config.push.parent)
    registry.record_evaluation(result.version, "heldout", "val", evaluation["adapter"], evaluation["base"],
                               run_id=run_id, passed=evaluation["passed"], failures=evaluation["failures"])
    return result.version.ref


def _same_on_every_process(value: str) -> str:
    """Under `accelerate launch` every process must agree on the run id (and so the run directory)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return value
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():  # Trainer/accelerate reuse this group rather than making their own
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _plot_curves(curves: dict, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if curves.get("train_loss"):
        steps, losses = zip(*curves["train_loss"])
        ax.plot(steps, losses, label="train loss")
    if curves.get("val_loss"):
        steps, losses = zip(*curves["val_loss"])
        ax.plot(steps, losses, marker="o", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
