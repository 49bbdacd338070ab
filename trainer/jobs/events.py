"""`JobEvents`: a `TrainerCallback` that writes a running job's progress into its events as training goes."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from transformers import TrainerCallback

logger = logging.getLogger(__name__)

STORED_CURVES = "loradock-curves.json"  # the run's curves.json, stored with a remote worker's checkpoint

# What a metrics event carries, by transformers' log key -> ours.
LOGGED = {"loss": "loss", "learning_rate": "learning_rate", "grad_norm": "grad_norm", "eval_loss": "eval_loss",
          "epoch": "epoch"}


class JobEvents(TrainerCallback):
    """Metrics every logging step, a checkpoint event (and record) at every save; only on the main process."""

    def __init__(self, queue, job_id: str, store_checkpoints: bool = False):
        """`store_checkpoints`: upload each checkpoint's files to the registry (`queue` is a `RemoteJobs`), so that
        a worker on another machine can resume the job from it."""
        self.queue = queue
        self.job_id = job_id
        self.store_checkpoints = store_checkpoints
        self.latest: dict = {}

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            where = f"from step {state.global_step}" if state.global_step else "from step 0"
            self.queue.add_event(self.job_id, "info", "message", f"training {state.max_steps} steps {where}",
                                 {"max_steps": state.max_steps, "start_step": state.global_step})

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or not state.is_world_process_zero or not ({"loss", "eval_loss"} & set(logs)):
            return
        metrics = {ours: float(logs[key]) for key, ours in LOGGED.items() if isinstance(logs.get(key), (int, float))}
        self.latest.update(metrics)
        self.queue.progress(self.job_id, state.global_step, state.max_steps, metrics)

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            kept = {k: v for k, v in self.latest.items() if k in ("loss", "eval_loss", "epoch")}
            files = self._store(path) if self.store_checkpoints else None
            self.queue.record_checkpoint(self.job_id, state.global_step, str(path.resolve()), kept, files)

    def _store(self, path: Path) -> list[dict]:
        """Upload the checkpoint's files, with the run's loss curves so far (for one continuous curve on resume)."""
        curves = path.parent.parent / "curves.json"  # <run>/checkpoints/checkpoint-N -> <run>/curves.json
        if curves.is_file():
            shutil.copyfile(curves, path / STORED_CURVES)
        return self.queue.upload_checkpoint(path)
