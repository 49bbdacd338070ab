"""Trainer callbacks: a progress bar that shows the loss, and the loss curves kept for the lineage."""

from __future__ import annotations

import json
import os
from pathlib import Path

from transformers import TrainerCallback


class LossProgressBar(TrainerCallback):
    """One tqdm bar over optimizer steps with the latest train and validation loss."""

    def __init__(self):
        self.bar = None
        self.postfix: dict[str, str] = {}

    def on_train_begin(self, args, state, control, **kwargs):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="training", unit="step", dynamic_ncols=True)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is None or not logs:
            return
        if "loss" in logs:
            self.postfix["loss"] = f"{logs['loss']:.4f}"
        if "eval_loss" in logs:
            self.postfix["val_loss"] = f"{logs['eval_loss']:.4f}"
        self.bar.set_postfix(self.postfix, refresh=True)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class CurveRecorder(TrainerCallback):
    """Keeps (step, loss) pairs for training and validation; saved beside the checkpoints so a resumed run keeps them."""

    def __init__(self):
        self.train_loss: list[tuple[int, float]] = []
        self.val_loss: list[tuple[int, float]] = []
        self.path: Path | None = None

    def load(self, path: Path) -> None:
        if path.exists():
            data = json.loads(path.read_text())
            self.train_loss = [tuple(p) for p in data.get("train_loss", [])]
            self.val_loss = [tuple(p) for p in data.get("val_loss", [])]

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or not state.is_world_process_zero:
            return
        if "loss" in logs:
            self.train_loss.append((state.global_step, float(logs["loss"])))
        if "eval_loss" in logs:
            self.val_loss.append((state.global_step, float(logs["eval_loss"])))

    def on_save(self, args, state, control, **kwargs):
        if self.path is not None and state.is_world_process_zero:
            # Drop points past the checkpoint (a resumed run re-logs them), then save atomically.
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.as_dict()))
            os.replace(tmp, self.path)

    def on_train_begin(self, args, state, control, **kwargs):
        step = state.global_step
        self.train_loss = [p for p in self.train_loss if p[0] <= step]
        self.val_loss = [p for p in self.val_loss if p[0] <= step]

    def as_dict(self) -> dict:
        return {"train_loss": [list(p) for p in self.train_loss], "val_loss": [list(p) for p in self.val_loss]}
