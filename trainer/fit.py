"""The fitting step of a run: the PEFT model and its tokenized data through transformers' `Trainer`.

Checkpoints go to `<run dir>/checkpoints` (resumable with `resume=True`), the loss curves to
`<run dir>/curves.json` as they are logged. Evaluation, the run record and the push are train.py's.
The config's `report_to` trackers (MLflow, W&B) log through transformers' integrations; see tracking.py.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from .config import TrainConfig

logger = logging.getLogger(__name__)


@dataclass
class Fitted:
    """What `fit` hands back: the trained model, its loss curves and how long a step took."""

    model: object
    curves: object  # callbacks.CurveRecorder
    train_runtime_s: float | None
    seconds_per_step: float
    is_main: bool  # the world's process zero: the one that evaluates, records and pushes
    tracking: dict = field(default_factory=dict)  # tracker -> its run's identity (tracking.TrackingCapture); {} untracked


def fit(model, train_features: list, val_features: list, collator, config: TrainConfig, run_dir: Path, resume: bool,
        progress: bool, callbacks: list = (), run_id: str | None = None) -> Fitted:
    """Train `model` on `train_features` (validation loss on `val_features`, if any), from the last checkpoint when resuming.

    `callbacks` are more `TrainerCallback`s (a job worker's event writer: `trainer/jobs/events.py`). `run_id` names the
    tracking runs by default (the run directory's name when not given).
    """
    from transformers import EarlyStoppingCallback, Trainer
    from transformers.trainer_callback import PrinterCallback

    from .callbacks import CurveRecorder, LossProgressBar
    from .tracking import TrackingCapture, tracking_environment, training_run_name

    has_val = bool(val_features)
    run_id = run_id or Path(run_dir).name
    with tracking_environment(config, run_dir, run_id, resume) as report_to:
        args, early_stop = training_arguments(config, run_dir, len(train_features), has_val, report_to,
                                              training_run_name(config, run_id))
        curves = CurveRecorder()
        capture = TrackingCapture(report_to, run_dir) if report_to else None
        callbacks = [curves, *callbacks, *([capture] if capture else [])]
        if progress:
            callbacks.append(LossProgressBar())
        if early_stop:
            callbacks.append(EarlyStoppingCallback(early_stopping_patience=config.early_stopping_patience))
        trainer = Trainer(
            model=model, args=args, train_dataset=_ListDataset(train_features),
            eval_dataset=_ListDataset(val_features) if has_val else None, data_collator=collator, callbacks=callbacks,
        )
        trainer.remove_callback(PrinterCallback)  # our progress bar shows the losses
        checkpoint = _last_checkpoint(run_dir / "checkpoints") if resume else None
        if resume and checkpoint is None:
            logger.info("no checkpoint saved yet in that run; starting it from step 0")
        elif checkpoint is not None:
            logger.info(f"continuing from {checkpoint.name}")
            curves.load(run_dir / "curves.json")
        train_started = time.time()
        curves.path = run_dir / "curves.json"
        output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        train_seconds = time.time() - train_started
    steps_run = max(1, trainer.state.global_step - (int(checkpoint.name.split("-")[-1]) if checkpoint else 0))
    return Fitted(trainer.model, curves, output.metrics.get("train_runtime"), train_seconds / steps_run,
                  trainer.is_world_process_zero(), capture.identities if capture else {})


def training_arguments(config: TrainConfig, run_dir: Path, train_examples: int, has_val: bool, report_to: list[str] = (),
                       run_name: str | None = None):
    """transformers' `TrainingArguments` for the config, and whether early stopping is on.

    `report_to`: the integrations to log to (tracking.tracking_environment sets their environment); `run_name`: the W&B
    run's name.
    """
    import torch
    from transformers import TrainingArguments

    steps_per_epoch = max(1, -(-train_examples // (config.micro_batch_size * config.gradient_accumulation_steps)))
    total_steps = config.max_steps if config.max_steps > 0 else int(steps_per_epoch * config.num_epochs)
    eval_steps = config.eval_steps or max(1, total_steps // 10)
    save_steps = config.save_steps or eval_steps
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
        logging_steps=max(1, min(10, total_steps // 20)), report_to=list(report_to), run_name=run_name,
        seed=config.seed, data_seed=config.seed,
        disable_tqdm=True, use_cpu=use_cpu, dataloader_num_workers=0, remove_unused_columns=False,
        save_only_model=False, ddp_find_unused_parameters=False,
    )
    return args, early_stop


def _checkpointing_args(enabled: bool) -> dict:
    """TrainingArguments' activation checkpointing switch (renamed in transformers 5; only passed when on)."""
    if not enabled:
        return {}
    import dataclasses

    from transformers import TrainingArguments

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    key = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    return {key: True, f"{key}_kwargs": {"use_reentrant": False}}


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
