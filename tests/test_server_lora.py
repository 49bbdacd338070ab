"""The heterogeneous multi-LoRA forward (server/lora.py) against PEFT, on the tiny seeded Llama.

Every comparison is row against row: a row run on slot k inside a mixed batch must give what PEFT
gives with adapter k active on the same batch (and slot 0 what the bare base gives).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import make_adapter_dir
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoTokenizer

from registry.modeling.errors import AdapterIncompatible
from registry.modeling.loading import load_base_model
from server.lora import DEFAULT_MAX_GROUPS, MultiLoraModel, load_lora_weights

PROMPTS = ["Q: 12+30 A:", "hello world", "The quick brown fox jumps", "What is the capital of", "LOUD", "adapters are small"]
# Adapters served side by side; slot = position + 1.
ADAPTERS = ["lora", "lora-all", "rslora", "pattern", "mlp"]
PROJ = ["q_proj", "k_proj", "v_proj", "o_proj"]
CUSTOM = {
    "rslora": dict(r=16, lora_alpha=8, use_rslora=True, target_modules=PROJ),
    "pattern": dict(
        r=4, lora_alpha=8, target_modules="all-linear",
        rank_pattern={"down_proj": 2, "layers.1.self_attn.q_proj": 6}, alpha_pattern={"v_proj": 3, "up_proj": 32},
    ),
    "mlp": dict(r=2, lora_alpha=4, target_modules=["gate_proj", "up_proj"]),
    "lora-bias": dict(r=4, target_modules=["q_proj"], lora_bias=True),
    "base-bias": dict(r=4, target_modules=["q_proj"], bias="all"),
    "embedding": dict(r=4, target_modules=["embed_tokens", "q_proj"]),
    "modules-to-save": dict(r=4, target_modules=["q_proj"], modules_to_save=["lm_head"]),
    "lm-head": dict(r=4, target_modules=["lm_head"]),
}


def save_custom_adapter(base_dir: Path, out: Path, kind: str, seed: int) -> Path:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    torch.manual_seed(seed)
    config = LoraConfig(task_type="CAUSAL_LM", init_lora_weights=False, **CUSTOM[kind])
    get_peft_model(model, config).save_pretrained(out)
    return out


def make(base_dir: Path, out: Path, kind: str, seed: int) -> Path:
    if kind in CUSTOM:
        return save_custom_adapter(base_dir, out, kind, seed)
    return make_adapter_dir(base_dir, out, kind, seed)


@pytest.fixture(scope="module")
def adapter_dirs(tiny_base_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("multi-lora-adapters")
    return {kind: make(tiny_base_dir, root / kind, kind, seed) for seed, kind in enumerate(ADAPTERS, start=1)}


def slot_of(kind: str) -> int:
    return ADAPTERS.index(kind) + 1


def tokenize(base_dir: Path, side: str) -> dict:
    tokenizer = AutoTokenizer.from_pretrained(base_dir, padding_side=side)
    return dict(tokenizer(PROMPTS, padding=True, return_tensors="pt"))


def load_multi(base_dir: Path, adapter_dirs: dict[str, Path], quantization: str = "none", **kwargs) -> MultiLoraModel:
    multi = MultiLoraModel(load_base_model(base_dir, quantization, device="cpu").model, max_slots=8, **kwargs)
    for kind in ADAPTERS:
        multi.assign(slot_of(kind), load_lora_weights(adapter_dirs[kind], multi))
    return multi


def load_peft(base_dir: Path, adapter_dirs: dict[str, Path], quantization: str = "none") -> PeftModel:
    base = load_base_model(base_dir, quantization, device="cpu").model
    peft = PeftModel.from_pretrained(base, adapter_dirs[ADAPTERS[0]], adapter_name=ADAPTERS[0])
    for kind in ADAPTERS[1:]:
        peft.load_adapter(adapter_dirs[kind], adapter_name=kind)
    return peft.eval()


@torch.no_grad()
def peft_outputs(peft: PeftModel, run) -> dict[str, torch.Tensor]:
    """`run(model)` with each adapter active in turn, and with none ("base")."""
    outputs = {}
    for kind in ADAPTERS:
        peft.set_adapter(kind)
        outputs[kind] = run(peft)
    with peft.disable_adapter():
        outputs["base"] = run(peft)
    return outputs


def expected_rows(reference: dict[str, torch.Tensor], row_slots: list[int]) -> torch.Tensor:
    kinds = ["base" if slot == 0 else ADAPTERS[slot - 1] for slot in row_slots]
    return torch.stack([reference[kind][i] for i, kind in enumerate(kinds)])


@pytest.fixture(scope="module")
def right_batch(tiny_base_dir) -> dict:
    return tokenize(tiny_base_dir, "right")


@pytest.fixture(scope="module")
def peft_logits(tiny_base_dir, adapter_dirs, right_batch) -> dict[str, torch.Tensor]:
    peft = load_peft(tiny_base_dir, adapter_dirs)
    return peft_outputs(peft, lambda model: model(**right_batch).logits)


@pytest.fixture(scope="module")
def multi(tiny_base_dir, adapter_dirs) -> MultiLoraModel:
    return load_multi(tiny_base_dir, adapter_dirs)


@torch.no_grad()
def logits(multi: MultiLoraModel, batch: dict, row_slots) -> torch.Tensor:
    with multi.rows(row_slots):
        return multi.model(**batch).logits


@pytest.mark.parametrize("kind", ADAPTERS)
def test_every_row_on_one_adapter_matches_peft(multi, right_batch, peft_logits, kind):
    assert (peft_logits[kind] - peft_logits["base"]).abs().max() > 1e-2  # the adapter really changes the output
    got = logits(multi, right_batch, [slot_of(kind)] * len(PROMPTS))
    torch.testing.assert_close(got, peft_logits[kind], atol=1e-5, rtol=0)


MIXES = {
    "all-different": [1, 2, 0, 3, 4, 5],
    "pairs-and-base": [2, 0, 2, 5, 0, 5],
    "one-adapter-and-base": [0, 3, 3, 0, 3, 0],
    "adapters-only": [5, 4, 3, 2, 1, 1],
    "base-only": [0] * 6,
}


@pytest.mark.parametrize("max_groups", [0, DEFAULT_MAX_GROUPS, 64], ids=["gathered", "default", "grouped"])
@pytest.mark.parametrize("mix", MIXES)
def test_mixed_batch_rows_match_their_adapter_alone(multi, right_batch, peft_logits, mix, max_groups):
    multi.max_groups = max_groups
    try:
        got = logits(multi, right_batch, MIXES[mix])
    finally:
        multi.max_groups = DEFAULT_MAX_GROUPS
    torch.testing.assert_close(got, expected_rows(peft_logits, MIXES[mix]), atol=1e-5, rtol=0)


def test_per_token_slots_equal_per_row_slots(multi, right_batch, peft_logits):
    row_slots = MIXES["all-different"]
    per_token = torch.tensor(row_slots)[:, None].expand_as(right_batch["input_ids"])
    torch.testing.assert_close(logits(multi, right_batch, per_token), expected_rows(peft_logits, row_slots), atol=1e-5, rtol=0)


@pytest.mark.parametrize("max_groups", [0, 64], ids=["gathered", "grouped"])
@torch.no_grad()
def test_per_token_slots_that_change_within_a_row(multi, max_groups):
    # Packed sequences (continuous batching) give each token its own adapter; checked on one layer by hand.
    name = "model.layers.1.mlp.down_proj"
    layer = multi.layers[name]
    torch.manual_seed(0)
    x = torch.randn(2, 7, layer.in_features)
    token_slots = torch.randint(0, 6, (2, 7))
    expected = layer.base(x)
    for (row, pos), slot in zip(torch.cartesian_prod(torch.arange(2), torch.arange(7)).tolist(), token_slots.flatten().tolist()):
        a, b = layer.stacked_A[slot], layer.stacked_B[slot]
        expected[row, pos] += b @ (a @ x[row, pos])
    multi.max_groups = max_groups
    try:
        with multi.rows(token_slots):
            got = layer(x)
    finally:
        multi.max_groups = DEFAULT_MAX_GROUPS
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_greedy_generation_in_a_mixed_batch_matches_peft(tiny_base_dir, adapter_dirs, multi):
    batch = tokenize(tiny_base_dir, "left")
    pad = AutoTokenizer.from_pretrained(tiny_base_dir).pad_token_id
    row_slots = MIXES["all-different"]

    def generate(model):
        return model.generate(**batch, max_new_tokens=8, do_sample=False, pad_token_id=pad)

    reference = peft_outputs(load_peft(tiny_base_dir, adapter_dirs), generate)
    with torch.no_grad(), multi.rows(row_slots):
        got = generate(multi.model)
    expected = expected_rows(reference, row_slots)
    assert torch.equal(got, expected)
    assert not torch.equal(got, reference["base"])  # the adapters steer generation somewhere else


def test_nf4_base_mixed_batch_matches_peft_on_the_same_base(tiny_base_dir, adapter_dirs, right_batch):
    import bitsandbytes as bnb

    multi = load_multi(tiny_base_dir, adapter_dirs, "nf4")
    assert all(isinstance(layer.base, bnb.nn.Linear4bit) for layer in multi.layers.values())
    reference = peft_outputs(load_peft(tiny_base_dir, adapter_dirs, "nf4"), lambda m: m(**right_batch).logits)
    row_slots = MIXES["all-different"]
    torch.testing.assert_close(logits(multi, right_batch, row_slots), expected_rows(reference, row_slots), atol=1e-4, rtol=0)


@torch.no_grad()
def test_int8_base_mixed_batch_matches_peft_mixed_batch(tiny_base_dir, adapter_dirs, right_batch):
    # LLM.int8 computes the outlier columns of the *whole batch* in fp16, so a row's base output depends
    # on its neighbours: the reference is PEFT's own mixed batch on the same rows, not one adapter at a time.
    # It also casts each layer's input to fp16 and rounds it to int8, so the last-bit difference between
    # our batched LoRA arithmetic and PEFT's grows layer by layer (6.6e-4 in the logits here, while int8
    # itself is 7.5e-2 from fp32). Like is compared with like: every wrapped layer gets the exact input
    # PEFT's layer got and must give PEFT's output; end to end, only a bound far below the adapters' effect.
    import bitsandbytes as bnb

    multi = load_multi(tiny_base_dir, adapter_dirs, "int8")
    assert all(isinstance(layer.base, bnb.nn.Linear8bitLt) for layer in multi.layers.values())
    row_slots = MIXES["all-different"]
    names = ["__base__" if slot == 0 else ADAPTERS[slot - 1] for slot in row_slots]
    peft = load_peft(tiny_base_dir, adapter_dirs, "int8")
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def keep(name):
        def hook(module, args, output):
            seen[name] = (args[0].clone(), output.clone())
        return hook

    hooks = [module.register_forward_hook(keep(name.removeprefix("base_model.model.")))
             for name, module in peft.named_modules() if isinstance(getattr(module, "base_layer", None), bnb.nn.Linear8bitLt)]
    try:
        reference = peft(**right_batch, adapter_names=names).logits
    finally:
        for hook in hooks:
            hook.remove()
    assert set(seen) == set(multi.layers)
    with multi.rows(row_slots):
        for name, (x, expected) in seen.items():
            torch.testing.assert_close(multi.layers[name](x), expected, atol=1e-5, rtol=0, msg=name)
    effect = (reference - peft(**right_batch, adapter_names=["__base__"] * len(names)).logits).abs().max()
    assert effect > 0.5  # the adapters move the logits by far more than the bound below
    torch.testing.assert_close(logits(multi, right_batch, row_slots), reference, atol=1e-2, rtol=0)


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("dora", "DoRA"),
        ("ia3", "peft_type is 'IA3'"),
        ("prefix", "peft_type is 'PREFIX_TUNING'"),
        ("lora-bias", "lora_bias"),
        ("base-bias", "bias='all'"),
        ("embedding", "embedding LoRA"),
        ("lm-head", "full base weight"),
        ("modules-to-save", "modules_to_save"),
    ],
)
def test_refuses_adapters_that_are_not_plain_lora(tiny_base_dir, tmp_path, kind, message):
    adapter = make(tiny_base_dir, tmp_path / kind, kind, seed=0)
    with pytest.raises(AdapterIncompatible, match=message):
        load_lora_weights(adapter)


def test_refuses_an_adapter_for_a_different_shape_base(tiny_base_dir, other_base_dir, tmp_path, multi):
    adapter = make_adapter_dir(other_base_dir, tmp_path / "wide", "lora", seed=0)
    weights = load_lora_weights(adapter)  # a well-formed adapter in itself
    bare = load_base_model(tiny_base_dir, device="cpu").model
    for model in (bare, multi):
        with pytest.raises(AdapterIncompatible, match=r"q_proj expects in=128, out=128 but the base layer has in=64, out=64"):
            load_lora_weights(adapter, model)
    before = multi.assigned
    with pytest.raises(AdapterIncompatible, match="different base"):
        multi.assign(1, weights)
    assert multi.assigned == before


def test_refuses_modules_the_server_does_not_wrap(tiny_base_dir, adapter_dirs):
    multi = MultiLoraModel(load_base_model(tiny_base_dir, device="cpu").model, max_slots=2, target_modules=["q_proj", "v_proj"])
    assert {name.rsplit(".", 1)[-1] for name in multi.layers} == {"q_proj", "v_proj"}
    multi.assign(1, load_lora_weights(adapter_dirs["lora"], multi))
    message = (
        r"targets down_proj, gate_proj, k_proj, o_proj, up_proj \(e\.g\. model\.layers\.0\.mlp\.down_proj\), "
        r"which this server does not apply LoRA to \(it wraps q_proj, v_proj\)"
    )
    with pytest.raises(AdapterIncompatible, match=message):
        load_lora_weights(adapter_dirs["lora-all"], multi)
    with pytest.raises(AdapterIncompatible, match="k_proj"):
        multi.assign(2, load_lora_weights(adapter_dirs["lora-all"]))
    assert multi.assigned == {1: 4}


def test_weights_fold_scaling_and_follow_rank_and_alpha_patterns(adapter_dirs):
    from safetensors.torch import load_file

    weights = load_lora_weights(adapter_dirs["pattern"])
    raw = load_file(adapter_dirs["pattern"] / "adapter_model.safetensors")
    a, b = weights.slot_pair("model.layers.0.self_attn.v_proj")  # what the slot holds: the scaling folded into B
    torch.testing.assert_close(b, raw["base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight"] * 3 / 4)
    assert weights.lora_A["model.layers.1.self_attn.q_proj"].shape == (6, 64)
    assert weights.lora_A["model.layers.0.mlp.down_proj"].shape == (2, 128)
    assert weights.rank == 6
    assert weights.nbytes == sum(t.numel() * 4 for t in raw.values())
    assert len(weights.modules) == 14  # all seven projections of both layers


def test_clear_and_reassign(tiny_base_dir, adapter_dirs, right_batch, peft_logits):
    multi = MultiLoraModel(load_base_model(tiny_base_dir, device="cpu").model, max_slots=3)
    assert multi.max_rank == 0 and multi.nbytes_per_slot == 0
    multi.assign(1, load_lora_weights(adapter_dirs["lora"]))
    multi.assign(2, load_lora_weights(adapter_dirs["mlp"]))
    assert multi.max_rank == 4 and multi.assigned == {1: 4, 2: 2}
    row_slots = [1, 2, 0, 1, 2, 0]
    before = logits(multi, right_batch, row_slots)

    multi.clear(1)  # rows still naming slot 1 get the bare base
    assert multi.assigned == {2: 2}
    cleared = logits(multi, right_batch, row_slots)
    torch.testing.assert_close(cleared[[0, 3]], peft_logits["base"][[0, 3]], atol=1e-5, rtol=0)
    torch.testing.assert_close(cleared[[1, 4]], before[[1, 4]], atol=1e-6, rtol=0)

    bytes_at_rank_4 = multi.nbytes_per_slot
    multi.assign(1, load_lora_weights(adapter_dirs["rslora"]))  # rank 16: every slot's storage grows
    assert multi.max_rank == 16 and multi.nbytes_per_slot == 4 * bytes_at_rank_4
    grown = logits(multi, right_batch, row_slots)
    torch.testing.assert_close(grown[[1, 4]], before[[1, 4]], atol=1e-6, rtol=0)
    torch.testing.assert_close(grown[[0, 3]], peft_logits["rslora"][[0, 3]], atol=1e-5, rtol=0)

    # Replacing an all-linear adapter by a q/v one leaves nothing of the first behind.
    multi.assign(2, load_lora_weights(adapter_dirs["lora-all"]))
    multi.assign(2, load_lora_weights(adapter_dirs["lora"]))
    torch.testing.assert_close(logits(multi, right_batch, [2] * 6), peft_logits["lora"], atol=1e-5, rtol=0)


def test_rows_outside_a_context_and_bad_slots(multi, adapter_dirs, right_batch, peft_logits):
    with torch.no_grad():
        torch.testing.assert_close(multi.model(**right_batch).logits, peft_logits["base"], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match=r"0\.\.8"):
        multi.rows([1, 9])
    with pytest.raises(ValueError, match=r"1\.\.8"):
        multi.assign(0, load_lora_weights(adapter_dirs["lora"]))
    with pytest.raises(ValueError, match="one slot per batch row"), torch.no_grad(), multi.rows([1, 2]):
        multi.model(**right_batch)
    # a failed forward leaves no plan behind
    assert all(layer.plan is None for layer in multi.layers.values())


# --- per-row copies kept between decode steps ----------------------------------------------


@pytest.fixture(scope="module")
def step_batch(tiny_base_dir) -> dict:
    """One token per row: the shape of a decode step."""
    ids = tokenize(tiny_base_dir, "right")["input_ids"][:, :1]
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


@pytest.fixture(scope="module")
def peft_step_logits(tiny_base_dir, adapter_dirs, step_batch) -> dict[str, torch.Tensor]:
    return peft_outputs(load_peft(tiny_base_dir, adapter_dirs), lambda model: model(**step_batch).logits)


def test_decode_steps_keep_gathered_copies_until_the_slots_change(tiny_base_dir, adapter_dirs, step_batch, peft_step_logits):
    multi = load_multi(tiny_base_dir, adapter_dirs)
    row_slots = MIXES["all-different"]
    plan = multi.plan(row_slots)
    assert multi.plan(list(row_slots)) is plan  # the same slots: the same plan, so layers can reuse their copies
    assert multi.gathered_nbytes == 0
    for _ in range(3):
        torch.testing.assert_close(logits(multi, step_batch, row_slots), expected_rows(peft_step_logits, row_slots),
                                   atol=1e-5, rtol=0)
    kept = multi.gathered_nbytes
    assert 0 < kept <= len(row_slots) * multi.nbytes_per_slot

    # Replacing an adapter drops every copy: the next step serves the new weights, not the kept ones.
    multi.assign(1, load_lora_weights(adapter_dirs["mlp"], multi))
    assert multi.gathered_nbytes == 0 and multi.plan(row_slots) is not plan
    swapped = logits(multi, step_batch, row_slots)
    rows_on_1 = [i for i, slot in enumerate(row_slots) if slot == 1]
    torch.testing.assert_close(swapped[rows_on_1], peft_step_logits["mlp"][rows_on_1], atol=1e-5, rtol=0)

    # A different batch frees the old copies before making its own.
    logits(multi, step_batch, [2] * len(row_slots))
    logits(multi, step_batch, list(reversed(row_slots)))
    assert multi.gathered_nbytes <= kept


@pytest.mark.parametrize("budget", [0, 1024])
def test_gathered_copies_respect_their_memory_budget(tiny_base_dir, adapter_dirs, step_batch, peft_step_logits, budget):
    multi = load_multi(tiny_base_dir, adapter_dirs, gather_cache_bytes=budget)
    row_slots = MIXES["all-different"]
    for _ in range(2):
        got = logits(multi, step_batch, row_slots)
    torch.testing.assert_close(got, expected_rows(peft_step_logits, row_slots), atol=1e-5, rtol=0)
    assert multi.gathered_nbytes == 0


def test_prefill_keeps_no_copies(tiny_base_dir, adapter_dirs, right_batch):
    multi = load_multi(tiny_base_dir, adapter_dirs)
    logits(multi, right_batch, MIXES["all-different"])  # several tokens per row: gathered once, used once
    assert multi.gathered_nbytes == 0


def test_slot_storage_preallocated_and_grown_outside_inference_mode(tiny_base_dir, adapter_dirs, right_batch, peft_logits):
    multi = MultiLoraModel(load_base_model(tiny_base_dir, device="cpu").model, max_slots=2, rank=4)
    assert multi.max_rank == 4 and multi.nbytes > 0
    with torch.inference_mode():  # where the engine's first request lands an adapter
        multi.assign(1, load_lora_weights(adapter_dirs["rslora"]))  # rank 16: grows the stacks
    assert multi.max_rank == 16
    multi.assign(2, load_lora_weights(adapter_dirs["lora"]))  # outside inference mode: still writable
    torch.testing.assert_close(logits(multi, right_batch, [1, 2, 0, 1, 2, 0]),
                               expected_rows(peft_logits, [3, 1, 0, 3, 1, 0]), atol=1e-5, rtol=0)
