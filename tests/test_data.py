"""Training data: loading and validation, dedup, split, prompt masking, padding, and the shipped example files."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from tiny import build_tokenizer

from registry.errors import LoradockError
from trainer.data import (
    IGNORE_INDEX, CausalCollator, DatasetSpec, DataError, Example, TokenizedExample, check_eos_is_trained, dataset_counts,
    deduplicate, load_datasets, pad_token_id_for, prepare_features, split_examples, tokenize_example,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def write_jsonl(path: Path, lines: list) -> Path:
    """Each item is a dict (written as JSON) or a str (written verbatim, for broken lines)."""
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


# ------------------------------------------------------------------------------------------- loading


def test_each_format_loads(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [
        {"instruction": "What is 2 + 2?", "input": "", "output": "4"},
        {"instruction": "Translate", "input": "bonjour", "output": "hello"},
    ])
    write_jsonl(tmp_path / "s.jsonl", [
        {"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "hi"},
                           {"from": "gpt", "value": "hello"}, {"from": "human", "value": "bye"},
                           {"from": "gpt", "value": "ciao"}]},
    ])
    write_jsonl(tmp_path / "c.jsonl", [
        {"messages": [{"role": "user", "content": "Shout this: hi"}, {"role": "assistant", "content": "HI!"}]},
    ])
    write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Q: 12+30 A:", "completion": " 42"}])
    specs = [DatasetSpec("a.jsonl", "alpaca"), DatasetSpec("s.jsonl", "sharegpt"), DatasetSpec("c.jsonl", "chat"),
             DatasetSpec("p.jsonl", "completion")]
    report = load_datasets(specs, base_dir=tmp_path)

    a1, a2, s, c, p = report.examples
    assert (a1.messages, a1.response, a1.source, a1.raw_prompt) == (user("What is 2 + 2?"), "4", "a.jsonl:1", None)
    assert a2.messages == user("Translate\n\nbonjour")
    assert s.messages == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
                          {"role": "assistant", "content": "hello"}, {"role": "user", "content": "bye"}]
    assert (s.response, s.source) == ("ciao", "s.jsonl:1")
    assert (c.messages, c.response) == (user("Shout this: hi"), "HI!")
    assert (p.raw_prompt, p.response) == ("Q: 12+30 A:", " 42")
    assert report.bad_lines == []
    assert [(f["path"], f["type"], f["lines"], f["valid"], f["bad"]) for f in report.files] == [
        ("a.jsonl", "alpaca", 2, 2, 0), ("s.jsonl", "sharegpt", 1, 1, 0), ("c.jsonl", "chat", 1, 1, 0),
        ("p.jsonl", "completion", 1, 1, 0)]


def test_file_digest_is_sha256_of_the_bytes(tmp_path):
    import hashlib

    path = write_jsonl(tmp_path / "a.jsonl", [{"instruction": "x", "output": "y"}, ""])
    report = load_datasets([DatasetSpec(str(path), "alpaca")])
    assert report.files[0]["sha256"] == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    assert report.files[0]["lines"] == 1, "blank lines are not records"


BAD_LINES = [
    ("alpaca", "{not json", "not valid JSON"),
    ("alpaca", "[1, 2]", "expected a JSON object, got list"),
    ("alpaca", {"input": "x", "output": "y"}, "missing field 'instruction'"),
    ("alpaca", {"instruction": "  ", "output": "y"}, "field 'instruction' is empty"),
    ("alpaca", {"instruction": "x", "output": 42}, "field 'output' must be a string, got int"),
    ("alpaca", {"instruction": "x", "output": ""}, "field 'output' is empty"),
    ("completion", {"prompt": "x"}, "missing field 'completion'"),
    ("sharegpt", {"text": "x"}, "missing field 'conversations' or 'messages'"),
    ("sharegpt", {"conversations": []}, "must be a non-empty list"),
    ("sharegpt", {"conversations": [{"from": "human", "value": "hi"}]}, "last turn must be from the assistant"),
    ("sharegpt", {"conversations": [{"from": "robot", "value": "hi"}, {"from": "gpt", "value": "x"}]},
     "unknown role 'robot'"),
    ("chat", {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": " "}]},
     "final assistant turn is empty"),
    ("chat", {"messages": [{"role": "user", "content": ["hi"]}, {"role": "assistant", "content": "x"}]}, "not a string"),
    ("chat", {"messages": [{"role": "system", "content": "s"}, {"role": "assistant", "content": "x"}]},
     "must follow a user turn"),
]


@pytest.mark.parametrize("kind, line, needle", BAD_LINES)
def test_each_kind_of_bad_line_is_named_by_file_and_line(tmp_path, kind, line, needle):
    good = {"alpaca": {"instruction": "x", "output": "y"}, "completion": {"prompt": "x", "completion": "y"},
            "sharegpt": {"messages": user("x") + [{"role": "assistant", "content": "y"}]}}
    good["chat"] = good["sharegpt"]
    path = write_jsonl(tmp_path / "d.jsonl", [good[kind], good[kind], line])
    with pytest.raises(DataError) as info:
        load_datasets([DatasetSpec(str(path), kind)])
    message = str(info.value)
    assert f"{path}:3: " in message and needle in message, message
    assert "--skip-bad-lines" in message
    assert isinstance(info.value, LoradockError)


def test_skip_bad_lines_counts_them(tmp_path):
    lines = [{"instruction": f"q{i}", "output": "a"} for i in range(5)] + ["oops", {"instruction": "q"}, "[]"]
    path = write_jsonl(tmp_path / "d.jsonl", lines)
    report = load_datasets([DatasetSpec(str(path), "alpaca")], skip_bad_lines=True)
    assert len(report.examples) == 5
    assert (report.files[0]["lines"], report.files[0]["valid"], report.files[0]["bad"]) == (8, 5, 3)
    assert [b.split(": ")[0] for b in report.bad_lines] == [f"{path}:6", f"{path}:7", f"{path}:8"]


def test_many_bad_lines_are_listed_up_to_ten_with_the_total(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", ["nope"] * 25)
    with pytest.raises(DataError, match=r"25 bad line\(s\).*:10: .*and 15 more") as info:
        load_datasets([DatasetSpec(str(path), "alpaca")])
    assert f"{path}:11:" not in str(info.value)


def test_missing_file_empty_file_and_unknown_type(tmp_path):
    with pytest.raises(DataError, match="dataset file not found: nope.jsonl"):
        load_datasets([DatasetSpec("nope.jsonl", "alpaca")], base_dir=tmp_path)
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="empty"):
        load_datasets([DatasetSpec(str(tmp_path / "empty.jsonl"), "alpaca")])
    with pytest.raises(DataError, match="unknown dataset type 'oasst'.*alpaca, sharegpt, chat, completion"):
        load_datasets([DatasetSpec(str(tmp_path / "empty.jsonl"), "oasst")])


# ------------------------------------------------------------------------------------------- dedup

LONG = ("the committee met on tuesday morning to review the quarterly budget and after a long discussion about "
        "travel costs office supplies and the new software licences it agreed to postpone the final decision "
        "until the finance team could present a revised forecast with clearer numbers for every department in "
        "the company including the regional offices that had asked for more staff and better equipment this year "
        "several members pointed out that the previous forecast had underestimated energy prices by a wide margin "
        "while others argued that the savings from remote work would more than cover the difference in the long run "
        "the chair summarised the options in a short memo circulated that afternoon and asked each manager to reply "
        "with concrete proposals before friday so that the board could vote on a single plan at its next meeting "
        "in the meantime all new hiring was frozen except for roles already approved and contractors were asked to "
        "submit their invoices early to give the accountants a clearer picture of the cash position going forward")


def ex(prompt: str, response: str = "ok", i: int = 0) -> Example:
    return Example(user(prompt), response, f"t.jsonl:{i}")


def test_exact_duplicates_ignore_case_whitespace_and_punctuation():
    examples = [ex("What is 2 + 2?", "4"), ex("what  is 2+2", "4."), ex("WHAT IS 2 + 2 ?!", " 4 "),
                ex("What is 2 + 3?", "5"), ex("What is 2 + 2?", "5")]
    report = deduplicate(examples)
    assert (report.exact_duplicates, report.near_duplicates) == (2, 0)
    assert report.kept == [examples[0], examples[3], examples[4]], "the first of each group is kept, in order"


def test_near_duplicates_differing_by_one_word_are_removed_and_distinct_texts_kept():
    assert len(LONG.split()) >= 150
    variants = [LONG, LONG.replace("tuesday", "wednesday"), LONG.replace("better", "newer"), LONG + " too"]
    distinct = [" ".join(reversed(LONG.split())), "What is 12 + 30?", "What is 13 + 30?", "Shout this: hello"]
    examples = [ex(t, "noted", i) for i, t in enumerate(variants + distinct)]
    report = deduplicate(examples)
    assert (report.exact_duplicates, report.near_duplicates) == (0, 3)
    assert [e.messages[0]["content"] for e in report.kept] == [LONG] + distinct
    assert deduplicate(examples).kept == report.kept, "deterministic"
    assert deduplicate(examples, near_threshold=0.99).near_duplicates == 0


# ------------------------------------------------------------------------------------------- split


def test_split_is_deterministic_disjoint_and_sized():
    examples = [ex(f"q{i}", i=i) for i in range(100)]
    train, val = split_examples(examples, 0.1, seed=7)
    assert (len(train), len(val)) == (90, 10)
    assert split_examples(examples, 0.1, seed=7) == (train, val)
    assert split_examples(examples, 0.1, seed=8)[1] != val
    assert not {e.source for e in train} & {e.source for e in val}
    assert {e.source for e in train} | {e.source for e in val} == {e.source for e in examples}
    assert [len(part) for part in split_examples(examples, 25, seed=0)] == [75, 25]
    assert split_examples(examples, 0, seed=0) == (examples, [])
    assert [len(part) for part in split_examples(examples[:2], 0.01, seed=0)] == [1, 1]
    with pytest.raises(DataError, match="leaves no training examples"):
        split_examples(examples, 100, seed=0)
    with pytest.raises(DataError, match="val_set_size"):
        split_examples(examples, -1, seed=0)


# ------------------------------------------------------------------------------------------- masking


def labelled(feature: TokenizedExample) -> list[int]:
    return [label for label in feature.labels if label != IGNORE_INDEX]


@pytest.mark.parametrize("example", [
    Example(user("What is 12 + 30?"), "42", "t:1"),
    Example([{"role": "system", "content": "Be loud."}, *user("hi"), {"role": "assistant", "content": "HI!"},
             *user("hello world")], "HELLO WORLD!", "t:2"),
    Example(user("Q: 12+30 A:"), " 42", "t:3", raw_prompt="Q: 12+30 A:"),
])
def test_prompt_is_masked_and_response_plus_eos_is_trained(tokenizer, example):
    feature = tokenize_example(example, tokenizer, sequence_len=256)
    if example.raw_prompt is None:
        prompt = tokenizer.apply_chat_template(example.messages, add_generation_prompt=True, tokenize=False)
    else:
        prompt = example.raw_prompt
    n_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert feature.labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert feature.labels[n_prompt:] == feature.input_ids[n_prompt:]
    assert feature.input_ids[-1] == tokenizer.eos_token_id and not feature.truncated
    assert tokenizer.decode(labelled(feature)) == example.response + tokenizer.eos_token
    assert tokenizer.decode(feature.input_ids) == prompt + example.response + tokenizer.eos_token


def test_truncation_is_flagged_and_all_masked_examples_are_dropped(tokenizer):
    short, long_answer = ex("hi", "hello"), ex("hi", "hello world " * 20)
    full = tokenize_example(short, tokenizer, 256)
    assert not full.truncated
    cut = tokenize_example(long_answer, tokenizer, len(full.input_ids))
    assert cut.truncated and len(cut.input_ids) == len(full.input_ids) and cut.input_ids[-1] != tokenizer.eos_token_id

    long_prompt = ex("hello world " * 40, "x")
    features, stats = prepare_features([short, long_answer, long_prompt], tokenizer, sequence_len=len(full.input_ids))
    assert stats["examples"] == 2 and stats["dropped_all_masked"] == 1 and stats["truncated_lost_eos"] == 1
    assert stats["prompt_tokens"] + stats["response_tokens"] == sum(len(f.input_ids) for f in features)


def test_refuses_when_every_label_would_be_masked(tokenizer):
    with pytest.raises(DataError, match=r"every label would be masked \(sequence_len=8 too short"):
        prepare_features([ex("hello world " * 10, "x"), ex("What is the capital of France?", "Paris")], tokenizer, 8)


# ------------------------------------------------------------------------------------------- padding


class MasksByTokenId(CausalCollator):
    """The classic bug: labels[input_ids == pad] = -100, which also erases EOS when pad == eos."""

    def __call__(self, features):
        batch = super().__call__(features)
        batch["labels"][batch["input_ids"] == self.pad_token_id] = IGNORE_INDEX
        return batch


@pytest.fixture(scope="module")
def features(tokenizer):
    examples = [ex("hi", "hello"), ex("What is 12 + 30?", "42"), ex("Shout this: adapters are small", "ADAPTERS ARE SMALL!")]
    return prepare_features(examples, tokenizer, 256)[0]


def test_collator_pads_right_and_labels_by_position(tokenizer, features):
    batch = CausalCollator(tokenizer.eos_token_id)(features)  # pad == eos: the worst case
    width = max(len(f.input_ids) for f in features)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (3, width)
    for row, f in enumerate(features):
        n = len(f.input_ids)
        assert batch["input_ids"][row].tolist() == f.input_ids + [tokenizer.eos_token_id] * (width - n)
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (width - n)
        assert batch["labels"][row].tolist() == f.labels + [IGNORE_INDEX] * (width - n)


@pytest.mark.parametrize("pad", ["pad", "eos"])
def test_eos_check_passes_for_the_collator_even_when_pad_is_eos(tokenizer, features, pad):
    pad_id = tokenizer.pad_token_id if pad == "pad" else tokenizer.eos_token_id
    check_eos_is_trained(features, CausalCollator(pad_id), tokenizer.eos_token_id)


def test_eos_check_catches_a_collator_that_masks_by_token_id(tokenizer, features):
    check_eos_is_trained(features, MasksByTokenId(tokenizer.pad_token_id), tokenizer.eos_token_id)  # harmless if pad != eos
    eos = tokenizer.eos_token_id
    with pytest.raises(DataError, match=rf"padding would mask EOS \(pad_token_id == eos_token_id = {eos} and"):
        check_eos_is_trained(features, MasksByTokenId(eos), eos)


# ------------------------------------------------------------------------------------------- shipped examples


def test_example_files_are_what_make_examples_writes(tmp_path):
    spec = importlib.util.spec_from_file_location("make_examples", EXAMPLES / "make_examples.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(tmp_path)
    for name in ("arith.jsonl", "shout.jsonl"):
        assert (tmp_path / name).read_bytes() == (EXAMPLES / name).read_bytes(), f"run examples/make_examples.py ({name})"
        assert (EXAMPLES / name).stat().st_size < 200_000


@pytest.mark.parametrize("name, kind", [("arith.jsonl", "alpaca"), ("shout.jsonl", "chat")])
def test_shipped_examples_load_clean_and_are_big_enough(tokenizer, name, kind):
    report = load_datasets([DatasetSpec(name, kind)], base_dir=EXAMPLES)
    assert report.bad_lines == [] and report.files[0]["bad"] == 0
    dedup = deduplicate(report.examples)
    assert dedup.exact_duplicates == 0 and len(dedup.kept) >= 1000
    train, val = split_examples(dedup.kept, 0.05, seed=0)
    features, stats = prepare_features(train, tokenizer, 128)
    check_eos_is_trained(features, CausalCollator(tokenizer.pad_token_id), tokenizer.eos_token_id)
    counts = dataset_counts(report, dedup, train, val, stats)
    assert counts["valid"] == counts["lines"] == len(report.examples)
    assert counts["train"] + counts["val"] == len(dedup.kept) and counts["trained_examples"] == len(train)
    assert "warning" not in counts and stats["dropped_all_masked"] == stats["truncated_lost_eos"] == 0


def test_small_datasets_get_a_warning_in_the_counts(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", [{"instruction": f"What is {i} + 1?", "output": str(i + 1)} for i in range(20)])
    report = load_datasets([DatasetSpec(str(path), "alpaca")])
    dedup = deduplicate(report.examples)
    train, val = split_examples(dedup.kept, 0.1, seed=0)
    counts = dataset_counts(report, dedup, train, val, prepare_features(train, tokenizer, 64)[1])
    assert counts["warning"] == "only 18 examples; fine-tuning usually wants >= 1,000"
    assert (counts["lines"], counts["train"], counts["val"]) == (20, 18, 2)


def test_a_tokenizer_without_pad_pads_with_eos(tokenizer):
    class NoPad:
        pad_token_id, eos_token_id = None, tokenizer.eos_token_id

    assert pad_token_id_for(NoPad()) == tokenizer.eos_token_id
    assert pad_token_id_for(tokenizer) == tokenizer.pad_token_id
    with pytest.raises(DataError, match="no pad token"):
        CausalCollator(None)
