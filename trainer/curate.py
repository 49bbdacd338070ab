"""Curation: an adapter's captured traffic and its feedback -> a dataset to train on, and a fresh slice to evaluate on.

From the captured requests (`registry/capture.py`) since a point in time, keep those whose feedback says they were
good (score >= `min_score`, or a positive label with no score), and those given a correction (the corrected response
replaces the served one, whatever the score). Then the trainer's own deduplication (exact, then near duplicates),
then drop every example already in the champion's training or held-out data (by the normalised-text digest that
deduplication uses), then hold out a seeded fresh slice. The result is written as JSONL the trainer reads back: `chat`
when every kept request was a chat, else `completion` (raw prompts, no chat template).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from registry.errors import InvalidInput
from registry.rollout_report import binary_outcome

from .data import Example, deduplicate, example_digest


@dataclass
class Curated:
    train: list[Example]
    heldout: list[Example]
    format: str                   # chat or completion: how `write` lays the examples out
    counts: dict = field(default_factory=dict)  # captured, with_feedback, kept, corrected, duplicates, already_trained
    notes: list[str] = field(default_factory=list)


def curate(rows: list[dict], min_score: float = 0.5, exclude: list[Example] = (), holdout: float = 0.0,
           seed: int = 0) -> Curated:
    """`rows`: `Captures.rows(...)` (each with its newest feedback); `exclude`: the champion's examples."""
    if not 0 <= holdout < 1:
        raise InvalidInput(f"--holdout {holdout}: expected a fraction, 0 <= holdout < 1")
    counts = {"captured": len(rows), "with_feedback": 0, "kept": 0, "corrected": 0}
    examples, raw = [], True
    for row in rows:
        score, label, correction = row.get("feedback_score"), row.get("feedback_label") or "", row.get("correction")
        if score is None and not label and not correction:
            continue
        counts["with_feedback"] += 1
        good = score >= min_score if score is not None else binary_outcome(None, label) is True
        if not (good or correction):
            continue
        response = correction or row["response"]
        if not response.strip():
            continue
        counts["corrected"] += bool(correction)
        if row["messages"]:
            raw = False
            examples.append(Example(row["messages"], response, f"capture:{row['request_id']}"))
        else:
            examples.append(Example([{"role": "user", "content": row["prompt"]}], response,
                                    f"capture:{row['request_id']}", raw_prompt=row["prompt"]))
    dedup = deduplicate(examples, seed=seed)
    trained = {example_digest(e) for e in exclude}
    fresh = [e for e in dedup.kept if example_digest(e) not in trained]
    counts.update(duplicates=dedup.exact_duplicates + dedup.near_duplicates,
                  already_trained=len(dedup.kept) - len(fresh))
    order = list(range(len(fresh)))
    random.Random(seed).shuffle(order)
    n_heldout = int(round(holdout * len(fresh))) if len(fresh) > 1 else 0
    heldout = [fresh[i] for i in sorted(order[:n_heldout])]
    train = [fresh[i] for i in sorted(order[n_heldout:])]
    counts.update(kept=len(train), heldout=len(heldout))
    return Curated(train, heldout, "completion" if raw and examples else "chat", counts)


def write(examples: list[Example], fmt: str, out: Path) -> int:
    """Write `examples` as JSONL of `fmt` (chat or completion) to `out`, all at once (a new file, then renamed)."""
    lines = []
    for e in examples:
        if fmt == "completion":
            lines.append({"prompt": e.raw_prompt if e.raw_prompt is not None else e.messages[-1]["content"],
                          "completion": e.response})
        else:
            lines.append({"messages": [*e.messages, {"role": "assistant", "content": e.response}]})
    out = Path(out)
    partial = out.with_name(out.name + ".partial")
    partial.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines))
    partial.replace(out)
    return len(lines)
