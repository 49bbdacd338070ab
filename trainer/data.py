"""Training data: JSONL files -> validated, deduplicated, split, tokenized examples with the prompt masked.

The pipeline, in the order the trainer calls it:

    load_datasets      read alpaca / sharegpt / chat / completion JSONL, one bad line -> "file:line: what"
    deduplicate        exact (normalised-text sha256) then near (MinHash + LSH) duplicates
    split_examples     a held-out split fixed by the seed, disjoint from training
    prepare_features   chat template, prompt labels -100, response + EOS trained, truncation counted
    CausalCollator     right padding; labels padded by *position*, never by token id
    check_eos_is_trained   proves on a real padded batch that EOS keeps its label
    dataset_counts     the counts that go into the version's lineage

Everything but the collator is plain Python (and numpy for MinHash), so it runs before torch
or the model is loaded and a bad dataset fails in seconds.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from registry.errors import InvalidInput

IGNORE_INDEX = -100  # the label PyTorch's cross-entropy skips
DATASET_TYPES = ("alpaca", "sharegpt", "chat", "completion")
MIN_VIABLE_EXAMPLES = 1000
MAX_LISTED_BAD_LINES = 10

# ShareGPT speaker names and OpenAI-style roles, mapped onto the roles chat templates know.
ROLE_NAMES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


class DataError(InvalidInput):
    """A dataset that cannot be trained on: a bad line (named by file:line), a missing file, nothing to learn."""


@dataclass(frozen=True)
class DatasetSpec:
    path: str
    """JSONL file; a relative path is read from `base_dir` (the config file's folder)."""
    type: str
    """One of DATASET_TYPES: `alpaca`, `sharegpt`, `chat` (same shapes as sharegpt) or `completion`."""


@dataclass
class Example:
    messages: list[dict]
    """The prompt side as chat messages, ending with a user turn; never trained on."""
    response: str
    """The final assistant turn / alpaca output / completion: the only text trained on."""
    source: str
    """`path:line` it came from, for error messages and debugging."""
    raw_prompt: str | None = None
    """Completion type only: the prompt as plain text, used without any chat template."""


@dataclass
class LoadReport:
    examples: list[Example]
    files: list[dict]
    """Per file: path, type, sha256 ("sha256:<hex>" of its bytes), lines (non-blank), valid, bad."""
    bad_lines: list[str] = field(default_factory=list)
    """`path:line: what is wrong`, for every bad line (skipped or not)."""


@dataclass
class DedupReport:
    kept: list[Example]
    exact_duplicates: int
    near_duplicates: int


@dataclass
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]
    truncated: bool
    """The example was longer than sequence_len and was cut from the right, so its EOS is gone."""


# --------------------------------------------------------------------------------------------- loading


class BadLine(ValueError):
    """Raised inside the per-line parsers; load_datasets turns it into `path:line: message`."""


def _string(record: dict, key: str, *, required: bool = True) -> str:
    value = record.get(key)
    if value is None:
        if required:
            raise BadLine(f"missing field {key!r}")
        return ""
    if not isinstance(value, str):
        raise BadLine(f"field {key!r} must be a string, got {type(value).__name__}")
    if required and not value.strip():
        raise BadLine(f"field {key!r} is empty")
    return value


def _parse_alpaca(record: dict) -> tuple[list[dict], str, str | None]:
    instruction = _string(record, "instruction")
    extra = _string(record, "input", required=False)
    output = _string(record, "output")
    prompt = instruction + ("\n\n" + extra if extra.strip() else "")
    return [{"role": "user", "content": prompt}], output, None


def _parse_completion(record: dict) -> tuple[list[dict], str, str | None]:
    prompt = _string(record, "prompt")
    completion = _string(record, "completion")
    return [{"role": "user", "content": prompt}], completion, prompt


def _parse_chat(record: dict) -> tuple[list[dict], str, str | None]:
    key = "conversations" if "conversations" in record else "messages" if "messages" in record else None
    if key is None:
        raise BadLine("missing field 'conversations' or 'messages'")
    turns = record[key]
    if not isinstance(turns, list) or not turns:
        raise BadLine(f"field {key!r} must be a non-empty list of turns")
    messages = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise BadLine(f"{key}[{i}] must be an object, got {type(turn).__name__}")
        role_key, content_key = ("from", "value") if "from" in turn else ("role", "content")
        role, content = turn.get(role_key), turn.get(content_key)
        if role is None:
            raise BadLine(f"{key}[{i}] has no 'role' (or 'from')")
        if role not in ROLE_NAMES:
            raise BadLine(f"{key}[{i}] has unknown role {role!r} (allowed: {', '.join(ROLE_NAMES)})")
        if not isinstance(content, str):
            what = "missing" if content is None else f"a {type(content).__name__}, not a string"
            raise BadLine(f"{key}[{i}] {content_key!r} is {what}")
        messages.append({"role": ROLE_NAMES[role], "content": content})
    if messages[-1]["role"] != "assistant":
        raise BadLine(f"the last turn must be from the assistant, got {messages[-1]['role']!r}")
    if not messages[-1]["content"].strip():
        raise BadLine("the final assistant turn is empty")
    if len(messages) < 2 or messages[-2]["role"] != "user":
        raise BadLine("the final assistant turn must follow a user turn")
    return messages[:-1], messages[-1]["content"], None


PARSERS = {"alpaca": _parse_alpaca, "sharegpt": _parse_chat, "chat": _parse_chat, "completion": _parse_completion}


def _parse_line(raw: bytes, parse) -> tuple[list[dict], str, str | None]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadLine(f"not UTF-8 ({e.reason} at byte {e.start})") from None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as e:
        raise BadLine(f"not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(record, dict):
        raise BadLine(f"expected a JSON object, got {type(record).__name__}")
    return parse(record)


def _load_file(spec: DatasetSpec, path: Path) -> tuple[list[Example], dict, list[str]]:
    data = path.read_bytes()
    examples, bad, lines = [], [], 0
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]  # a UTF-8 byte-order mark some editors write
        if not raw.strip():
            continue  # blank lines (a trailing newline, a separator) are not records
        lines += 1
        source = f"{spec.path}:{number}"
        try:
            messages, response, raw_prompt = _parse_line(raw, PARSERS[spec.type])
        except BadLine as e:
            bad.append(f"{source}: {e}")
            continue
        examples.append(Example(messages, response, source, raw_prompt))
    if lines == 0:
        raise DataError(f"dataset {spec.path} is empty (no JSONL lines in {path})")
    info = {"path": spec.path, "type": spec.type, "sha256": "sha256:" + hashlib.sha256(data).hexdigest(),
            "lines": lines, "valid": len(examples), "bad": len(bad)}
    return examples, info, bad


def load_datasets(specs: list[DatasetSpec], skip_bad_lines: bool = False, base_dir: Path | None = None) -> LoadReport:
    """Read and validate every dataset; with bad lines, refuse (listing them) unless `skip_bad_lines`."""
    if not specs:
        raise DataError("no datasets given (datasets: [{path, type}, ...])")
    for spec in specs:
        if spec.type not in PARSERS:
            raise DataError(f"unknown dataset type {spec.type!r} for {spec.path} (allowed: {', '.join(DATASET_TYPES)})")
    report = LoadReport(examples=[], files=[], bad_lines=[])
    for spec in specs:
        path = Path(spec.path).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = Path(base_dir) / path
        if not path.is_file():
            raise DataError(f"dataset file not found: {spec.path} (looked for {path.resolve()})")
        examples, info, bad = _load_file(spec, path)
        report.examples.extend(examples)
        report.files.append(info)
        report.bad_lines.extend(bad)
    if report.bad_lines and not skip_bad_lines:
        shown = "; ".join(report.bad_lines[:MAX_LISTED_BAD_LINES])
        more = len(report.bad_lines) - MAX_LISTED_BAD_LINES
        raise DataError(
            f"{len(report.bad_lines)} bad line(s) in the dataset: {shown}"
            + (f"; ... and {more} more" if more > 0 else "")
            + " (fix them, or pass --skip-bad-lines to train without them)"
        )
    if not report.examples:
        raise DataError(f"no valid examples in {', '.join(s.path for s in specs)} ({len(report.bad_lines)} bad lines)")
    return report


# --------------------------------------------------------------------------------------------- dedup


_PUNCTUATION = re.compile(r"[^\w\s]")
_MERSENNE_PRIME = np.uint64((1 << 31) - 1)  # products of two values below 2**31 fit in uint64
SHORT_TEXT_WORDS = 10  # below this many words, word 3-shingles are too few; use character 5-shingles


def normalize_text(text: str) -> str:
    """Casefold, punctuation to spaces, whitespace collapsed: what counts as "the same text"."""
    return " ".join(_PUNCTUATION.sub(" ", text.casefold()).split())


def example_digest(example: Example) -> str:
    """sha256 of an example's normalised text: what "the same example" means to deduplication and curation."""
    return hashlib.sha256(_example_text(example).encode("utf-8")).hexdigest()


def _example_text(example: Example) -> str:
    prompt = " ".join(m["content"] for m in example.messages)
    # The separator survives normalisation, so "ab"+"c" and "a"+"bc" stay different.
    return normalize_text(prompt) + "\x00" + normalize_text(example.response)


def _shingles(text: str) -> set[str]:
    words = text.replace("\x00", " \x00 ").split()
    if len(words) >= SHORT_TEXT_WORDS:
        return {" ".join(words[i:i + 3]) for i in range(len(words) - 2)}
    if len(text) <= 5:
        return {text}
    return {text[i:i + 5] for i in range(len(text) - 4)}


def _stable_hash(shingle: str) -> int:
    return int.from_bytes(hashlib.blake2b(shingle.encode("utf-8"), digest_size=8).digest(), "little")


def _minhash(shingles: set[str], a: np.ndarray, b: np.ndarray) -> np.ndarray:
    x = np.array([_stable_hash(s) for s in sorted(shingles)], dtype=np.uint64) % _MERSENNE_PRIME
    return ((a[:, None] * x[None, :] + b[:, None]) % _MERSENNE_PRIME).min(axis=1)


def _band_rows(num_perm: int, threshold: float) -> int:
    """Rows per LSH band: the most (fewest false candidates) that still finds a pair at `threshold` 99.9% of the time."""
    best = 1
    for rows in range(1, num_perm + 1):
        bands = num_perm // rows
        if 1 - (1 - threshold ** rows) ** bands >= 0.999:
            best = rows
    return best


def deduplicate(examples: list[Example], near_threshold: float = 0.9, num_perm: int = 64, seed: int = 0) -> DedupReport:
    """Drop exact duplicates (same normalised text), then near duplicates (MinHash Jaccard >= near_threshold).

    Of each duplicate group the first example in file order is kept. Deterministic for a given seed.
    """
    if not 0 < near_threshold <= 1:
        raise DataError(f"near_threshold must be in (0, 1], got {near_threshold}")
    seen: set[str] = set()
    unique: list[tuple[Example, str]] = []
    for example in examples:
        text = _example_text(example)
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        if digest not in seen:
            seen.add(digest)
            unique.append((example, text))
    exact = len(examples) - len(unique)

    rng = np.random.default_rng(seed)
    a = rng.integers(1, int(_MERSENNE_PRIME), size=num_perm, dtype=np.uint64)
    b = rng.integers(0, int(_MERSENNE_PRIME), size=num_perm, dtype=np.uint64)
    rows = _band_rows(num_perm, near_threshold)
    buckets: list[dict[bytes, list[int]]] = [{} for _ in range(num_perm // rows)]
    kept: list[Example] = []
    signatures: list[np.ndarray] = []
    for example, text in unique:
        signature = _minhash(_shingles(text), a, b)
        keys = [signature[i * rows:(i + 1) * rows].tobytes() for i in range(len(buckets))]
        candidates = {j for band, key in zip(buckets, keys) for j in band.get(key, ())}
        if any(np.mean(signatures[j] == signature) >= near_threshold for j in sorted(candidates)):
            continue
        for band, key in zip(buckets, keys):
            band.setdefault(key, []).append(len(kept))
        kept.append(example)
        signatures.append(signature)
    return DedupReport(kept=kept, exact_duplicates=exact, near_duplicates=len(unique) - len(kept))


# --------------------------------------------------------------------------------------------- split


def dedup_and_split(examples: list[Example], val_set_size: float | int, seed: int) -> tuple[DedupReport, list[Example], list[Example]]:
    """(dedup report, train, val): the trainer's seeded deduplication, then its seeded held-out split.

    Training and the rebuilding of a run's held-out split (`trainer/heldout.py`) both call this, so they
    cannot drift apart."""
    dedup = deduplicate(examples, seed=seed)
    train, val = split_examples(dedup.kept, val_set_size, seed)
    return dedup, train, val


def split_datasets(report: LoadReport, test: LoadReport | None, val_set_size: float | int,
                   seed: int) -> tuple[DedupReport, list[Example], list[Example]]:
    """(dedup report, train, val) of the training files' `report` and, when the config gives `test_datasets`, their
    `test` report: then every training example trains and the held-out split is the test files' (deduplicated),
    else `dedup_and_split`'s seeded split. Training and `trainer/heldout.py` both call this."""
    if test is None:
        return dedup_and_split(report.examples, val_set_size, seed)
    dedup = deduplicate(report.examples, seed=seed)
    return dedup, list(dedup.kept), deduplicate(test.examples, seed=seed).kept


def with_test_files(report: LoadReport, test: LoadReport | None) -> LoadReport:
    """The training files' report with the held-out files' appended (marked `split: test`), as lineage records them."""
    if test is None:
        return report
    return LoadReport(report.examples, [*report.files, *({**f, "split": "test"} for f in test.files)],
                      [*report.bad_lines, *test.bad_lines])


def split_examples(examples: list[Example], val_set_size: float | int, seed: int) -> tuple[list[Example], list[Example]]:
    """(train, val): a held-out split fixed by `seed`; both keep file order. A fraction in (0, 1) or a count."""
    n = len(examples)
    if isinstance(val_set_size, bool) or not isinstance(val_set_size, (int, float)) or val_set_size < 0:
        raise DataError(f"val_set_size must be a fraction in (0, 1) or a count >= 1, got {val_set_size!r}")
    if val_set_size == 0:
        return list(examples), []
    if val_set_size < 1:
        n_val = min(max(1, round(val_set_size * n)), n - 1) if n >= 2 else 0
    elif float(val_set_size).is_integer():
        n_val = int(val_set_size)
        if n_val >= n:
            raise DataError(f"val_set_size={n_val} leaves no training examples (only {n} after deduplication)")
    else:
        raise DataError(f"val_set_size must be a fraction in (0, 1) or a whole count, got {val_set_size!r}")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    val_idx = set(order[:n_val])
    train = [e for i, e in enumerate(examples) if i not in val_idx]
    val = [e for i, e in enumerate(examples) if i in val_idx]
    return train, val


# --------------------------------------------------------------------------------------------- tokenize


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def tokenize_example(example: Example, tokenizer, sequence_len: int) -> TokenizedExample:
    """input_ids = prompt + response + EOS; labels = -100 over the prompt, the ids over response + EOS.

    Prompt and response are tokenized separately and concatenated, so the boundary between masked
    and trained tokens is exact (no guessing where the prompt ends inside one tokenization).
    """
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DataError("the tokenizer has no eos_token; the model could not learn to stop")
    if getattr(tokenizer, "chat_template", None) and example.raw_prompt is None:
        prompt_text = tokenizer.apply_chat_template(example.messages, add_generation_prompt=True, tokenize=False)
        prompt = _ids(tokenizer, prompt_text)
    else:
        text = example.raw_prompt if example.raw_prompt is not None else "\n\n".join(m["content"] for m in example.messages)
        bos = tokenizer.bos_token_id
        prompt = ([bos] if bos is not None and getattr(tokenizer, "add_bos_token", False) else []) + _ids(tokenizer, text)
    response = _ids(tokenizer, example.response) + [eos]
    input_ids = prompt + response
    labels = [IGNORE_INDEX] * len(prompt) + response
    truncated = len(input_ids) > sequence_len
    return TokenizedExample(input_ids[:sequence_len], labels[:sequence_len], truncated)


def prepare_features(train: list[Example], tokenizer, sequence_len: int) -> tuple[list[TokenizedExample], dict]:
    """Tokenize every example; drop those whose prompt fills the context. Refuse if nothing is left to learn."""
    if not isinstance(sequence_len, int) or sequence_len < 2:
        raise DataError(f"sequence_len must be an integer >= 2, got {sequence_len!r}")
    features, dropped = [], 0
    for example in train:
        feature = tokenize_example(example, tokenizer, sequence_len)
        if all(label == IGNORE_INDEX for label in feature.labels):
            dropped += 1
        else:
            features.append(feature)
    if not features:
        raise DataError(
            f"every label would be masked (sequence_len={sequence_len} too short for the prompts?): "
            f"all {dropped} examples have no response token within the first {sequence_len} tokens"
        )
    response_tokens = sum(sum(label != IGNORE_INDEX for label in f.labels) for f in features)
    stats = {
        "examples": len(features),
        "dropped_all_masked": dropped,
        "truncated_lost_eos": sum(f.truncated for f in features),
        "prompt_tokens": sum(len(f.input_ids) for f in features) - response_tokens,
        "response_tokens": response_tokens,
    }
    return features, stats


# --------------------------------------------------------------------------------------------- batches


def pad_token_id_for(tokenizer) -> int:
    """The tokenizer's pad id, or its EOS id when it has none.

    Padding with EOS is safe ONLY because CausalCollator pads labels by position: a collator that
    masked labels wherever input_ids == pad_token_id would then also mask every real EOS, and the
    model would never learn to stop. `check_eos_is_trained` proves this on a real batch.
    """
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


class CausalCollator:
    """Right-pads a batch of TokenizedExamples into torch tensors: input_ids, attention_mask, labels."""

    def __init__(self, pad_token_id: int):
        if pad_token_id is None:
            raise DataError("the tokenizer has no pad token; pass pad_token_id_for(tokenizer) (its EOS id) instead")
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[TokenizedExample]) -> dict[str, Any]:
        import torch

        width = max(len(f.input_ids) for f in features)
        input_ids = torch.full((len(features), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(features), width), dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
        for row, f in enumerate(features):
            n = len(f.input_ids)
            input_ids[row, :n] = torch.tensor(f.input_ids, dtype=torch.long)
            attention_mask[row, :n] = 1
            labels[row, :n] = torch.tensor(f.labels, dtype=torch.long)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def check_eos_is_trained(features: list[TokenizedExample], collator, eos_token_id: int) -> None:
    """Collate a real batch (the first few, the shortest and the longest) and prove every EOS keeps its label.

    Also checks that padding is never trained and real labels come through unchanged, so a collator
    that masks by token id (which breaks when pad_token_id == eos_token_id) is caught before training.
    """
    complete = [f for f in features if not f.truncated]
    if not complete:
        raise DataError("every example is cut off before its EOS (raise sequence_len); the model would never learn to stop")
    sample = complete[:6] + [min(complete, key=lambda f: len(f.input_ids)), max(complete, key=lambda f: len(f.input_ids))]
    batch = collator(sample)
    ids, mask, labels = (batch[k].tolist() for k in ("input_ids", "attention_mask", "labels"))
    pad = getattr(collator, "pad_token_id", None)
    cause = f"pad_token_id == eos_token_id = {eos_token_id} and " if pad == eos_token_id else ""
    for row, f in enumerate(sample):
        n, last = len(f.input_ids), len(f.input_ids) - 1
        if ids[row][last] != eos_token_id or mask[row][last] != 1 or labels[row][last] != eos_token_id:
            raise DataError(
                f"padding would mask EOS ({cause}the collator gave label {labels[row][last]} at the EOS position "
                f"{last} of a {n}-token row, not {eos_token_id}); labels must be padded by position, not by token id"
            )
        if labels[row][:n] != f.labels:
            raise DataError(f"the collator changed the labels of a {n}-token row; labels must be padded by position only")
        if any(label != IGNORE_INDEX for label in labels[row][n:]) or any(mask[row][n:]):
            raise DataError(f"the collator trains or attends to padding after position {last} of a {n}-token row")


# --------------------------------------------------------------------------------------------- lineage


def dataset_counts(report: LoadReport, dedup: DedupReport, train: list[Example], val: list[Example], prep_stats: dict) -> dict:
    """The dataset counts recorded in the version's lineage, with a warning when the training set is small."""
    counts = {
        "lines": sum(f["lines"] for f in report.files),
        "valid": sum(f["valid"] for f in report.files),
        "bad": sum(f["bad"] for f in report.files),
        "exact_duplicates": dedup.exact_duplicates,
        "near_duplicates": dedup.near_duplicates,
        "unique": len(dedup.kept),
        "train": len(train),
        "val": len(val),
        "dropped_all_masked": prep_stats["dropped_all_masked"],
        "truncated_lost_eos": prep_stats["truncated_lost_eos"],
        "trained_examples": prep_stats["examples"],
        "prompt_tokens": prep_stats["prompt_tokens"],
        "response_tokens": prep_stats["response_tokens"],
    }
    if prep_stats["examples"] < MIN_VIABLE_EXAMPLES:
        counts["warning"] = f"only {prep_stats['examples']} examples; fine-tuning usually wants >= {MIN_VIABLE_EXAMPLES:,}"
    return counts
