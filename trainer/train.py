"""One training run: config + data -> a trained adapter, evaluated, pushed with its lineage.

The run directory (`$LORADOCK_HOME/runs/<run id>` unless `output_dir` says otherwise) holds
`run.json` (config, status), `checkpoints/` (resumable), `adapter/` (the result), `metrics.json`
(loss curves, evaluation) and `loss.png`. Under `accelerate launch` every process trains;
only the main one evaluates, records and pushes.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from registry import Registry
from registry.bases import DEFAULT_BASE, Base
from registry.db import utcnow
from registry.errors import BaseNotFound, LoradockError

from .config import ConfigError, TrainConfig
from .environment import hardware, library_versions, peak_memory_mb
from .runs import Heartbeat, process_identity, write_run_json


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


def resolve_base(registry: Registry, base_model: str) -> Base:
    """A registered base by name, or a path / hub id (registered on first use, matched afterwards)."""
    try:
        return registry.get_base(base_model)
    except BaseNotFound:
        if base_model == DEFAULT_BASE:
            return registry.fetch_default_base()[0]
    for base in registry.list_bases():
        if base.matches(base_model) and (Path(base_model).is_dir() is False or Path(base.path) == Path(base_model).resolve()):
            return base
    leaf = base_model.rstrip("/").rsplit("/", 1)[-1].lower()
    name = "".join(ch if ch.isalnum() or ch in "._-" else "-" for ch in leaf).strip("-.") or "base"
    return registry.add_base(base_model, name)[0]


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


def _prepare(config: TrainConfig, registry: Registry, skip_bad_lines: bool, log) -> _Prepared:
    from transformers import set_seed

    from registry.loading import load_base_model

    from . import data as data_mod

    warnings: list[str] = []
    base = resolve_base(registry, config.base_model)
    log(f"base {base.name} ({base.weights_digest[:19]}), adapter {config.adapter}, quantization {config.quantization}")

    # Data: validated, deduplicated, split by seed; the held-out split never reaches the Trainer.
    specs = [data_mod.DatasetSpec(d.path, d.type) for d in config.datasets]
    report = data_mod.load_datasets(specs, skip_bad_lines=skip_bad_lines)
    if report.bad_lines:
        warnings.append(f"skipped {len(report.bad_lines)} bad lines (first: {report.bad_lines[0]})")
    dedup, train_examples, val_examples = data_mod.dedup_and_split(report.examples, config.val_set_size, config.seed)

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
        log(f"warning: {w}")
    log(f"data: {len(train_features)} train / {len(val_features)} held-out examples "
        f"({dedup.exact_duplicates} exact and {dedup.near_duplicates} near duplicates removed)")

    from peft import get_peft_model

    model = get_peft_model(loaded.model, build_peft_config(config))
    if config.gradient_checkpointing:
        model.enable_input_require_grads()
    trainable, total = model.get_nb_trainable_parameters()
    log(f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.2f} %)")
    return _Prepared(base, report, dedup, val_examples, train_features, val_features, collator, tokenizer, counts, model,
                     trainable, total, warnings)


def train(
    config: TrainConfig, registry: Registry, resume: bool = False, run_id: str | None = None,
    skip_bad_lines: bool = False, push: bool = True, progress: bool = True, log=print, config_path: Path | None = None,
) -> TrainResult:
    """Run the whole job. `log` receives one-line status messages (the CLI prints them).

    Everything that can refuse the run (config, dataset files and lines, base, target modules) is
    checked before the run directory is made, so a refused run leaves nothing behind. A run that
    fails afterwards is recorded as failed (interrupted for Ctrl-C); one killed outright is found
    abandoned by `reg runs ls` (its process is gone).
    """
    from registry.loading import quiet_libraries

    quiet_libraries()
    started = time.time()
    is_main = int(os.environ.get("RANK", "0")) == 0
    if resume:
        run_id, run_dir = find_resumable_run(registry, config, run_id)
        log(f"resuming run {run_id} from {run_dir}")
    else:
        run_id = _same_on_every_process(run_id or os.environ.get("LORADOCK_RUN_ID") or new_run_id(config))
        run_dir = Path(config.output_dir) if config.output_dir else registry.runs_dir / run_id
    job = _prepare(config, registry, skip_bad_lines, log)

    run_dir.mkdir(parents=True, exist_ok=True)
    heartbeat = Heartbeat(run_dir) if is_main else None
    try:
        if heartbeat is not None:
            source = {"config_path": str(Path(config_path).resolve())} if config_path else {}
            write_run_json(run_dir, run_id=run_id, config=config.resolved(), config_hash=config.config_hash(), **source,
                           status="running", started_at=utcnow(), finished_at=None, error=None, **process_identity())
            heartbeat.start()
        return _fit_evaluate_push(job, config, registry, run_id, run_dir, resume, push, progress and is_main, started, log)
    except BaseException as exc:
        if heartbeat is not None:
            write_run_json(run_dir, status="interrupted" if isinstance(exc, KeyboardInterrupt) else "failed",
                           finished_at=utcnow(), error=" ".join(str(exc).split())[:500] or type(exc).__name__)
        raise
    finally:
        if heartbeat is not None:
            heartbeat.stop()


def _fit_evaluate_push(
    job: _Prepared, config: TrainConfig, registry: Registry, run_id: str, run_dir: Path, resume: bool, push: bool,
    progress: bool, started: float, log,
) -> TrainResult:
    import torch
    from transformers import EarlyStoppingCallback, Trainer, TrainingArguments

    from .callbacks import CurveRecorder, LossProgressBar
    from .evaluate import evaluate_run

    model, tokenizer, collator, base = job.model, job.tokenizer, job.collator, job.base
    train_features, val_features, val_examples = job.train_features, job.val_features, job.val_examples
    steps_per_epoch = max(1, -(-len(train_features) // (config.micro_batch_size * config.gradient_accumulation_steps)))
    total_steps = config.max_steps if config.max_steps > 0 else int(steps_per_epoch * config.num_epochs)
    eval_steps = config.eval_steps or max(1, total_steps // 10)
    save_steps = config.save_steps or eval_steps
    has_val = bool(val_features)
    use_cpu = not torch.cuda.is_available()
    bf16 = (not use_cpu and torch.cuda.is_bf16_supported()) if config.bf16 == "auto" else bool(config.bf16)
    tf32 = (not use_cpu and torch.cuda.get_device_capability()[0] >= 8) if config.tf32 == "auto" else bool(config.tf32)
    early_stop = config.early_stopping_patience is not None and has_val
    if early_stop and save_steps % eval_steps:
        save_steps = eval_steps  # the best checkpoint must be one that was evaluated
    args = TrainingArguments(
        output_dir=str(run_dir / "checkpoints"),
        per_device_train_batch_size=config.micro_batch_size, per_device_eval_batch_size=config.micro_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps, num_train_epochs=config.num_epochs,
        max_steps=config.max_steps if config.max_steps > 0 else -1,  # 0 means num_epochs (Axolotl); HF would run 1 step
        learning_rate=config.learning_rate, lr_scheduler_type=config.lr_scheduler,
        warmup_steps=config.warmup_steps, weight_decay=config.weight_decay, optim=config.optimizer,
        bf16=bf16, tf32=tf32 or None, **_checkpointing_args(config.gradient_checkpointing),
        eval_strategy="steps" if has_val else "no", eval_steps=eval_steps if has_val else None,
        save_strategy="steps", save_steps=save_steps, save_total_limit=config.save_total_limit,
        load_best_model_at_end=early_stop, metric_for_best_model="eval_loss" if early_stop else None,
        greater_is_better=False if early_stop else None,
        logging_steps=max(1, min(10, total_steps // 20)), report_to=[], seed=config.seed, data_seed=config.seed,
        disable_tqdm=True, use_cpu=use_cpu, dataloader_num_workers=0, remove_unused_columns=False,
        save_only_model=False, ddp_find_unused_parameters=False,
    )
    curves = CurveRecorder()
    callbacks = [curves]
    if progress:
        callbacks.append(LossProgressBar())
    if early_stop:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=config.early_stopping_patience))
    trainer = Trainer(
        model=model, args=args, train_dataset=_ListDataset(train_features), eval_dataset=_ListDataset(val_features) if has_val else None,
        data_collator=collator, callbacks=callbacks,
    )
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # our progress bar shows the losses
    checkpoint = _last_checkpoint(run_dir / "checkpoints") if resume else None
    if resume and checkpoint is None:
        log("no checkpoint saved yet in that run; starting it from step 0")
    elif checkpoint is not None:
        log(f"continuing from {checkpoint.name}")
        curves.load(run_dir / "curves.json")
    train_started = time.time()
    curves.path = run_dir / "curves.json"
    output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    train_seconds = time.time() - train_started
    steps_run = max(1, trainer.state.global_step - (int(checkpoint.name.split("-")[-1]) if checkpoint else 0))
    seconds_per_step = train_seconds / steps_run
    if not trainer.is_world_process_zero():
        return TrainResult(run_id, run_dir, None, curves.as_dict(), None, time.time() - started, seconds_per_step, peak_memory_mb())

    model = trainer.model
    model.eval()
    adapter_dir = run_dir / "adapter"
    model.save_pretrained(adapter_dir)
    tokenizer.save_pretrained(adapter_dir)  # lets `PeftModel` users decode without the base's directory
    curve_data = curves.as_dict()
    curve_data["train_runtime_s"] = output.metrics.get("train_runtime")
    plot_path = _plot_curves(curve_data, run_dir / "loss.png", title=f"{config.push.name} ({config.adapter})")

    log("evaluating on the held-out split (adapter and base) ...")
    evaluation = evaluate_run(model, tokenizer, val_examples, val_features, collator, config, curve_data, log=log,
                              progress=progress)
    duration = time.time() - started
    metrics = {**curve_data, "seconds_per_step": seconds_per_step, "peak_memory_mb": peak_memory_mb(),
               "trainable_parameters": job.trainable, "total_parameters": job.total, "loss_plot": str(plot_path)}
    (run_dir / "metrics.json").write_text(json.dumps({"curves": metrics, "evaluation": evaluation}, indent=2, default=str))

    version_ref = None
    if push:
        registry.record_run(
            run_id, config.push.name, config=config.resolved(), config_hash=config.config_hash(), base=base,
            datasets=[{**f, "counts": job.counts} for f in job.report.files] if len(job.report.files) == 1 else
            [*job.report.files, {"path": "(all files)", "counts": job.counts}],
            seed=config.seed, libraries=library_versions(),
            hardware={**hardware(), "processes": int(os.environ.get("WORLD_SIZE", "1"))}, metrics=metrics,
            started_at=time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(started)), finished_at=utcnow(),
            duration_s=duration, run_dir=str(run_dir),
        )
        message = config.push.message or f"trained by {run_id}"
        result = registry.push(adapter_dir, config.push.name, base=base.name, message=message, alias=config.push.alias,
                               run_id=run_id, allow_duplicate=True)
        version_ref = result.version.ref
        registry.record_evaluation(result.version, "heldout", "val", evaluation["adapter"], evaluation["base"],
                                   run_id=run_id, passed=evaluation["passed"], failures=evaluation["failures"])
    write_run_json(run_dir, status="succeeded", finished_at=utcnow(), version=version_ref, duration_s=duration)
    return TrainResult(run_id, run_dir, version_ref, curve_data, evaluation, duration, seconds_per_step, peak_memory_mb(),
                       job.warnings)


def _checkpointing_args(enabled: bool) -> dict:
    """TrainingArguments' activation checkpointing switch (renamed in transformers 5; only passed when on)."""
    if not enabled:
        return {}
    import dataclasses

    from transformers import TrainingArguments

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    key = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    return {key: True, f"{key}_kwargs": {"use_reentrant": False}}


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


class _ListDataset:
    """The tokenized examples as a map-style dataset; `CausalCollator` turns a list of them into a batch."""

    def __init__(self, features):
        self.features = features

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int):
        return self.features[i]


def _last_checkpoint(checkpoints: Path) -> Path | None:
    found = [p for p in checkpoints.glob("checkpoint-*") if p.is_dir() and (p / "trainer_state.json").exists()]
    return max(found, key=lambda p: int(p.name.split("-")[-1])) if found else None


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
