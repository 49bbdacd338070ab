"""Fine-tuning jobs on the trainer's side: checking a submission (`submit.py`), the worker that claims and runs
jobs (`worker.py`), the child process that runs one with the trainer (`run.py`), and its event writer (`events.py`).

The queue itself is the registry's (`registry/jobs/`); the training loop is `trainer.train.train`, the one
`reg train` runs.
"""
