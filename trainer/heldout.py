"""A version's held-out examples, rebuilt from its training run's lineage.

The trainer never stores the held-out split itself: it is fixed by the run's recorded config
(dataset files, `val_set_size` or `test_datasets`, `seed`) and the data pipeline. Rebuilding it gives the same
examples, provided the dataset files are still where the run read them and still hash to the
recorded sha256. `reg export` uses them as fidelity probes.
"""

from __future__ import annotations

from registry import Registry
from registry.records import Version

from .data import DataError, DatasetSpec, Example, load_datasets, split_datasets, with_test_files


def trained_examples(registry: Registry, version: Version) -> tuple[list[Example], str]:
    """Every example of the version's run, training and held-out files alike, as the trainer read them (what curation
    must not feed back in); none, and why not in the description, when they cannot be read again."""
    run = registry.run(version.run_id) if version.run_id else None
    config = (run or {}).get("config") or {}
    if not config.get("datasets"):
        return [], f"{version.ref} has no training run with datasets recorded"
    files = [DatasetSpec(d["path"], d["type"]) for d in config["datasets"] + (config.get("test_datasets") or [])]
    try:
        return load_datasets(files, skip_bad_lines=True).examples, f"the data of run {run['id']} ({version.ref})"
    except DataError as exc:
        return [], f"the data of run {run['id']} cannot be read again ({exc})"


def held_out_examples(registry: Registry, version: Version) -> tuple[list[Example], str]:
    """(examples, description); no examples (and why not, in the description) when they cannot be rebuilt."""
    run = registry.run(version.run_id) if version.run_id else None
    if run is None:
        return [], f"{version.ref} has no training run recorded"
    config = run.get("config") or {}
    held_out = config.get("test_datasets") or []
    if not (config.get("val_set_size") or held_out) or not config.get("datasets"):
        return [], f"run {run['id']} of {version.ref} had no held-out split"

    def load(datasets):  # skipping bad lines: the run stopped on them or skipped them
        return load_datasets([DatasetSpec(d["path"], d["type"]) for d in datasets], skip_bad_lines=True)

    try:
        report, test = load(config["datasets"]), load(held_out) if held_out else None
    except DataError as exc:
        return [], f"the data of run {run['id']} cannot be read again ({exc})"
    recorded = {d["path"]: d.get("sha256") for d in run.get("datasets") or [] if d.get("sha256")}
    changed = [f["path"] for f in with_test_files(report, test).files if recorded.get(f["path"]) not in (None, f["sha256"])]
    if changed:
        return [], f"dataset {', '.join(changed)} changed since run {run['id']}"
    _, _, val = split_datasets(report, test, config.get("val_set_size", 0), config["seed"])
    return val, f"held-out split of run {run['id']} ({version.ref})"


def held_out_probes(registry: Registry, versions: list[Version], limit: int = 8) -> tuple[list[dict], str]:
    """Probe texts (prompt and reference answer) from the versions' held-out examples, shared out across them.

    Each probe is `{"messages": [..., assistant answer]}` or, for completion data, `{"text": prompt + answer}`.
    Returns no probes, with the reasons, when no version has held-out examples.
    """
    found, why_not = [], []
    for version in versions:
        examples, description = held_out_examples(registry, version)
        (found if examples else why_not).append((examples, description))
    if not found:
        return [], "; ".join(d for _, d in why_not)
    per_version = max(1, limit // len(found))
    probes = [_probe(e) for examples, _ in found for e in examples[:per_version]][:limit]
    return probes, "; ".join(d for _, d in found)


def _probe(example: Example) -> dict:
    if example.raw_prompt is not None:
        return {"text": example.raw_prompt + example.response}
    return {"messages": [*example.messages, {"role": "assistant", "content": example.response}]}
