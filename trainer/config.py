"""The training config: one place that defines each YAML key, its default, its help and its validation.

Keys follow Axolotl's names. `load_config(path, overrides)` reads the YAML, applies
`--set key=value` overrides (dotted keys reach nested sections: `push.name=arith`), rejects
unknown keys by name, validates every value, and returns a `TrainConfig` whose `resolved()`
dict (and its hash) is recorded with the version it produces.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, fields
from pathlib import Path

from registry.errors import InvalidInput, LoradockError, shown
from registry.fields import documented
from registry.names import validate_name

from .metrics import TASK_METRICS

ADAPTERS = ("lora", "qlora", "dora", "ia3", "prefix")
SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial")
OPTIMIZERS = ("adamw_torch", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit", "sgd", "adafactor")
DATASET_TYPES = ("alpaca", "sharegpt", "chat", "completion")
DATASET_KEYS = ("datasets", "test_datasets")  # the training data, then the held-out data (Axolotl's keys)
TRACKERS = ("mlflow", "wandb")
WANDB_MODES = ("online", "offline", "disabled")
# Where a run is reported, not what it trains: these keys are in the resolved config (so the lineage records them)
# but not in its hash, so switching tracking on, off or elsewhere keeps a config's identity (`reg train --resume`
# still finds its unfinished run) and hashes recorded before these keys existed still match.
TRACKING_KEYS = ("report_to", "mlflow_tracking_uri", "mlflow_experiment_name", "mlflow_run_name", "wandb_project",
                 "wandb_entity", "wandb_name", "wandb_mode")


class ConfigError(InvalidInput):
    """A training config key that is unknown or has a bad value; the message names the key."""


@dataclass
class DatasetConfig:
    path: str = documented("", "JSONL file, relative to the config file's directory.")
    type: str = documented("alpaca", f"Record format: one of {', '.join(DATASET_TYPES)}.")


@dataclass
class PushConfig:
    name: str | None = documented(None, "Adapter name to push the result under (default: the config file's name).")
    alias: str | None = documented(None, "Alias to point at the new version (e.g. staging).")
    message: str = documented("", "Version message.")
    parent: int | None = documented(None, "The version (number) of this adapter it is made from, in its lineage "
                                          "(default: the latest); the loop sets its champion.")


@dataclass
class EvalConfig:
    task_metric: str = documented("exact_match", f"The task's headline generation metric: one of {', '.join(TASK_METRICS)}.")
    max_examples: int = documented(64, "Held-out examples to generate answers for (adapter and base each).")
    max_new_tokens: int = documented(24, "Generation length for the generation metrics.")
    general_text: str | None = documented(None, "Text file for the general-ability perplexity check (default: the shipped one).")
    min_task_score: float | None = documented(None, "Fail the evaluation if the task metric is below this.")
    min_gain_over_base: float | None = documented(None, "Fail if the task metric does not beat the base's by at least this.")
    max_general_ppl_ratio: float | None = documented(1.5, "Fail if general-text perplexity rises above base x this (forgetting).")
    min_distinct_ratio: float | None = documented(None, "Fail if distinct-2 of the adapter's answers falls below base x this (format collapse).")


@dataclass
class TrainConfig:
    """A fine-tuning run. Every field is a YAML key; see README "Training" for a worked example."""

    base_model: str = documented("smollm2-135m-instruct", "Registered base name, local model directory or hub id.")
    load_in_4bit: bool = documented(False, "QLoRA: load the base in 4-bit NF4 with double quantization.")
    load_in_8bit: bool = documented(False, "Load the base in 8-bit (LLM.int8).")
    adapter: str = documented("lora", f"Adapter kind: one of {', '.join(ADAPTERS)} (qlora = lora on a 4-bit base).")
    lora_from_version: str | None = documented(None, "Continue training a registered version's weights (NAME:N or "
                                                     "NAME@ALIAS, on the same base) instead of a new adapter; its own "
                                                     "PEFT settings apply (lora_r, lora_alpha and targets are ignored).")
    lora_r: int = documented(16, "LoRA rank.")
    lora_alpha: float = documented(32, "LoRA alpha (scale = alpha / r).")
    lora_dropout: float = documented(0.05, "Dropout on the LoRA input.")
    lora_target_modules: list[str] | str = documented("all-linear", "Modules to adapt: a list of names, or all-linear.")
    num_virtual_tokens: int = documented(16, "Prefix tuning: number of virtual tokens.")
    datasets: list[DatasetConfig] = documented(help="Training data: a list of {path, type}.", factory=list)
    val_set_size: float = documented(0.1, "Held-out split: a fraction in (0, 1) or a count of examples; 0 disables it.")
    test_datasets: list[DatasetConfig] = documented(
        help="Held-out data: a list of {path, type}; when given, it is the held-out split (val_set_size is not used).",
        factory=list)
    sequence_len: int = documented(512, "Maximum tokens per example (longer ones are truncated from the right).")
    micro_batch_size: int = documented(8, "Examples per forward pass.")
    gradient_accumulation_steps: int = documented(1, "Forward passes per optimizer step.")
    num_epochs: float = documented(1.0, "Passes over the training split (ignored when max_steps > 0).")
    max_steps: int = documented(
        -1, "Optimizer steps to run; overrides num_epochs when > 0. 0 or -1 (unset) trains num_epochs, as in Axolotl.")
    learning_rate: float = documented(2e-4, "Peak learning rate.")
    lr_scheduler: str = documented("cosine", f"Schedule: one of {', '.join(SCHEDULERS)}.")
    warmup_steps: int = documented(0, "Linear warmup steps.")
    weight_decay: float = documented(0.0, "AdamW weight decay.")
    optimizer: str = documented("adamw_torch", f"One of {', '.join(OPTIMIZERS)}; the 8-bit ones need bitsandbytes support.")
    bf16: bool | str = documented("auto", "bf16 mixed precision: true, false or auto (on where the hardware supports it).")
    tf32: bool | str = documented("auto", "TF32 matmuls on Ampere+ GPUs: true, false or auto.")
    gradient_checkpointing: bool = documented(False, "Recompute activations in the backward pass to save memory.")
    eval_steps: int | None = documented(None, "Evaluate validation loss every N steps (default: about 10 times per run).")
    save_steps: int | None = documented(None, "Checkpoint every N steps (default: eval_steps).")
    save_total_limit: int = documented(2, "Checkpoints to keep.")
    early_stopping_patience: int | None = documented(None, "Stop after this many evaluations without validation-loss improvement.")
    seed: int = documented(42, "Seed for the split, the adapter's initialisation and the data order.")
    output_dir: str | None = documented(None, "Run directory (default: $LORADOCK_HOME/runs/<run id>).")
    report_to: list[str] = documented(
        help=f"Experiment tracking through transformers' integrations: a list of {', '.join(TRACKERS)} (or one name); "
             "default none.", factory=list)
    mlflow_tracking_uri: str | None = documented(
        None, "MLflow tracking server (http(s)://...) or local file store (a directory, relative to the current one as "
              "in MLflow, or a file: URI); default: $MLFLOW_TRACKING_URI, else MLflow's own default.")
    mlflow_experiment_name: str | None = documented(
        None, "MLflow experiment (created when missing); default: $MLFLOW_EXPERIMENT_NAME, else MLflow's Default.")
    mlflow_run_name: str | None = documented(None, "MLflow run name (default: the loradock run id).")
    wandb_project: str | None = documented(
        None, "W&B project; default: $WANDB_PROJECT, else transformers' default (huggingface).")
    wandb_entity: str | None = documented(None, "W&B team or user; default: $WANDB_ENTITY, else your W&B default entity.")
    wandb_name: str | None = documented(None, "W&B run name (default: the loradock run id).")
    wandb_mode: str | None = documented(
        None, f"W&B mode: one of {', '.join(WANDB_MODES)}; default: $WANDB_MODE, else online. W&B files go under the "
              "run directory (offline: all of them).")
    push: PushConfig = documented(help="Where the result goes: {name, alias, message}.", factory=PushConfig)
    evaluation: EvalConfig = documented(help="Held-out evaluation settings and pass/fail thresholds.", factory=EvalConfig)

    def resolved(self) -> dict:
        """The config as recorded in the lineage: every key, defaults filled in."""
        return dataclasses.asdict(self)

    def config_hash(self) -> str:
        """The hash of the resolved config without the tracking keys (see TRACKING_KEYS)."""
        return resolved_config_hash(self.resolved())

    @property
    def quantization(self) -> str:
        if self.load_in_4bit:
            return "nf4"
        return "int8" if self.load_in_8bit else "none"


def form_fields(names: list[str]) -> list[dict]:
    """The config keys `names` (`datasets.type`: a dataset entry's key) as a form shows them: name, type, default
    and help from the one schema above, and the allowed values where there is a closed list (the portal's form)."""
    known = {**{f.name: f for f in fields(TrainConfig)}, **{f"datasets.{f.name}": f for f in fields(DatasetConfig)}}
    choices = {"adapter": list(ADAPTERS), "lr_scheduler": list(SCHEDULERS), "optimizer": list(OPTIMIZERS),
               "datasets.type": list(DATASET_TYPES)}
    out = []
    for name in names:
        f = known[name]
        default = f.default if f.default is not dataclasses.MISSING else None
        kind = {int: "int", float: "float", bool: "bool"}.get(type(default), "str")
        out.append({"name": name, "type": kind, "default": default, "help": f.metadata.get("help", ""),
                    "choices": choices.get(name)})
    return out


def dataset_entries(raw: dict) -> list[tuple[str, object]]:
    """(`datasets[0]`-style key, entry) for each dataset of a config's mapping: the training data, then the held-out
    data (`test_datasets`), the order in which a job lists its files."""
    entries = []
    for key in DATASET_KEYS:
        value = raw.get(key) or []
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list of {{path, type}}, got {shown(value)}")
        entries += [(f"{key}[{i}]", entry) for i, entry in enumerate(value)]
    return entries


def resolved_config_hash(resolved: dict) -> str:
    """`TrainConfig.config_hash` of a resolved config (also a job's frozen one, whose datasets are blobs)."""
    identity = {key: value for key, value in resolved.items() if key not in TRACKING_KEYS}
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


# --- loading ---------------------------------------------------------------------------------


def read_config_file(path: Path) -> dict:
    """The YAML mapping in a config file, unchecked; ConfigError for a missing file, bad YAML or not a mapping."""
    import yaml

    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of keys, got {type(raw).__name__}")
    return raw


def load_config(path: Path | str, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML config, apply `key=value` overrides, validate; raise `ConfigError` naming the key."""
    path = Path(path)
    raw = read_config_file(path)
    for item in overrides or []:
        _apply_override(raw, item)
    config = _build(TrainConfig, raw, prefix="")
    # Paths are relative to the config file, so a config and its data move together.
    for ds in config.datasets + config.test_datasets:
        if not Path(ds.path).is_absolute():
            ds.path = str((path.parent / ds.path).resolve())
    if config.evaluation.general_text and not Path(config.evaluation.general_text).is_absolute():
        config.evaluation.general_text = str((path.parent / config.evaluation.general_text).resolve())
    if config.push.name is None:
        config.push.name = path.stem.lower().replace(" ", "-")
    validate(config)
    return config


def _apply_override(raw: dict, item: str) -> None:
    import yaml

    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value")
    key, value = item.split("=", 1)
    target = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        target = target.setdefault(part, {})
        if not isinstance(target, dict):
            raise ConfigError(f"--set {item!r}: {part} is not a section")
    target[parts[-1]] = yaml.safe_load(value) if value.strip() else None


def _build(cls, raw: dict, prefix: str):
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ConfigError(f"unknown config key {prefix + unknown[0]!r} (known keys: {', '.join(sorted(known))})")
    values = {}
    for name, value in raw.items():
        key = prefix + name
        if name in DATASET_KEYS:
            if not isinstance(value, list):
                raise ConfigError(f"{key}: expected a list of {{path, type}}, got {value!r}")
            values[name] = [_build(DatasetConfig, _mapping(v, f"{key}[{i}]"), f"{key}[{i}].") for i, v in enumerate(value)]
        elif name == "push":
            values[name] = _build(PushConfig, _mapping(value, key), key + ".")
        elif name == "evaluation":
            values[name] = _build(EvalConfig, _mapping(value, key), key + ".")
        else:
            values[name] = _coerce(key, value, known[name])
    return cls(**values)


def _mapping(value, key: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: expected a mapping, got {value!r}")
    return value


def _coerce(key: str, value, f: dataclasses.Field):
    kind = str(f.type)
    if value is None:
        if "None" in kind:
            return None
        if kind == "list[str]":
            return []
        raise ConfigError(f"{key}: a value is required")
    if kind == "list[str]":
        if isinstance(value, str):
            return [value]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
        raise ConfigError(f"{key}: expected a name or a list of names, got {shown(value)}")
    if kind.startswith("bool |") or kind == "bool":
        if isinstance(value, bool):
            return value
        if "str" in kind and value == "auto":
            return value
        raise ConfigError(f"{key}: expected true or false{' or auto' if 'str' in kind else ''}, got {value!r}")
    if kind.startswith("int"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if kind.startswith("float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if kind.startswith("list[str] | str"):
        if isinstance(value, str):
            return value
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            return value
        raise ConfigError(f"{key}: expected a list of module names or all-linear, got {value!r}")
    if kind.startswith("str"):
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    return value


def validate_choice(key: str, task_metric: str) -> None:
    _check(task_metric in TASK_METRICS, key, f"must be one of {', '.join(TASK_METRICS)}, got {task_metric!r}")


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


def validate(c: TrainConfig) -> None:
    """Cross-field and range checks; each error names the key and the value."""
    _check(c.adapter in ADAPTERS, "adapter", f"must be one of {', '.join(ADAPTERS)}, got {c.adapter!r}")
    if c.adapter == "qlora":
        _check(not c.load_in_8bit, "load_in_8bit", "qlora loads the base in 4-bit; drop load_in_8bit")
        c.load_in_4bit = True
    _check(not (c.load_in_4bit and c.load_in_8bit), "load_in_4bit", "load_in_4bit and load_in_8bit are exclusive")
    _check(c.lora_r > 0, "lora_r", f"must be a positive integer, got {c.lora_r}")
    _check(c.lora_alpha > 0, "lora_alpha", f"must be positive, got {c.lora_alpha}")
    _check(0 <= c.lora_dropout < 1, "lora_dropout", f"must be in [0, 1), got {c.lora_dropout}")
    if isinstance(c.lora_target_modules, str):
        _check(c.lora_target_modules == "all-linear", "lora_target_modules", f"expected a list or all-linear, got {c.lora_target_modules!r}")
    _check(c.num_virtual_tokens > 0, "num_virtual_tokens", f"must be positive, got {c.num_virtual_tokens}")
    _check(bool(c.datasets), "datasets", "at least one {path, type} is required")
    for key in DATASET_KEYS:
        for i, ds in enumerate(getattr(c, key)):
            _check(bool(ds.path), f"{key}[{i}].path", "is required")
            _check(ds.type in DATASET_TYPES, f"{key}[{i}].type", f"must be one of {', '.join(DATASET_TYPES)}, got {ds.type!r}")
    _check(c.val_set_size >= 0 and (c.val_set_size < 1 or float(c.val_set_size).is_integer()), "val_set_size",
           f"must be a fraction in [0, 1) or a whole count, got {c.val_set_size}")
    _check(16 <= c.sequence_len <= 1_000_000, "sequence_len", f"must be between 16 and 1000000, got {c.sequence_len}")
    _check(c.micro_batch_size > 0, "micro_batch_size", f"must be positive, got {c.micro_batch_size}")
    _check(c.gradient_accumulation_steps > 0, "gradient_accumulation_steps", f"must be positive, got {c.gradient_accumulation_steps}")
    _check(c.max_steps >= -1, "max_steps", f"must be > 0, or 0 / -1 to train num_epochs, got {c.max_steps}")
    _check(c.max_steps > 0 or c.num_epochs > 0, "num_epochs", f"set num_epochs > 0 or max_steps > 0 (got {c.num_epochs}, {c.max_steps})")
    _check(0 < c.learning_rate < 1, "learning_rate", f"must be in (0, 1), got {c.learning_rate}")
    _check(c.lr_scheduler in SCHEDULERS, "lr_scheduler", f"must be one of {', '.join(SCHEDULERS)}, got {c.lr_scheduler!r}")
    _check(c.warmup_steps >= 0, "warmup_steps", f"must be >= 0, got {c.warmup_steps}")
    _check(c.weight_decay >= 0, "weight_decay", f"must be >= 0, got {c.weight_decay}")
    _check(c.optimizer in OPTIMIZERS, "optimizer", f"must be one of {', '.join(OPTIMIZERS)}, got {c.optimizer!r}")
    for key in ("eval_steps", "save_steps", "early_stopping_patience"):
        value = getattr(c, key)
        _check(value is None or value > 0, key, f"must be positive, got {value}")
    _check(c.save_total_limit > 0, "save_total_limit", f"must be positive, got {c.save_total_limit}")
    if c.early_stopping_patience is not None:
        _check(c.val_set_size > 0 or bool(c.test_datasets), "early_stopping_patience",
               "needs a validation split (val_set_size > 0, or test_datasets)")
    _check(c.evaluation.task_metric in TASK_METRICS, "evaluation.task_metric",
           f"must be one of {', '.join(TASK_METRICS)}, got {c.evaluation.task_metric!r}")
    _check(c.evaluation.max_examples >= 0, "evaluation.max_examples", f"must be >= 0, got {c.evaluation.max_examples}")
    _check(c.evaluation.max_new_tokens > 0, "evaluation.max_new_tokens", f"must be positive, got {c.evaluation.max_new_tokens}")
    _validate_tracking(c)
    general = c.evaluation.general_text
    _check(general is None or Path(general).is_file(), "evaluation.general_text", f"no such file {general!r}")
    try:
        validate_name(c.push.name or "")
        if c.push.alias:
            validate_name(c.push.alias, "alias")
    except LoradockError as exc:
        raise ConfigError(f"push: {exc}") from None


def _validate_tracking(c: TrainConfig) -> None:
    """`report_to` names known trackers (one name becomes a list, repeats are dropped); `wandb_mode` is a W&B mode."""
    if isinstance(c.report_to, str):
        c.report_to = [c.report_to]
    for name in c.report_to:
        _check(name in TRACKERS, "report_to", f"must be {' or '.join(TRACKERS)} (one name or a list), got {shown(name)}")
    c.report_to = list(dict.fromkeys(c.report_to))
    _check(c.wandb_mode is None or c.wandb_mode in WANDB_MODES, "wandb_mode",
           f"must be one of {', '.join(WANDB_MODES)}, got {shown(c.wandb_mode)}")
    for key in TRACKING_KEYS[1:]:
        value = getattr(c, key)
        _check(value is None or value.strip() != "", key, "must not be empty (leave it out for the default)")
