"""The memory/cost planner (`reg plan`): published figures, monotonicity, inputs and the GPU table.

Pure arithmetic, no torch: these run in well under a second.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from cli.plan_view import format_gpu_table, format_plan_table
from trainer.plan import METHODS, NF4_BYTES_PER_PARAM, adapter_params, estimate, plan, recommend
from trainer.plan_inputs import (
    GIB, KNOWN_SHAPES, PACKAGED_GPU_TABLE, GpuType, ModelShape, PlanError, load_gpu_table, parse_params, shape_for_params,
    shape_from_config,
)

SMOLLM2_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 576, "num_hidden_layers": 30,
    "vocab_size": 49152, "intermediate_size": 1536, "num_attention_heads": 9, "num_key_value_heads": 3,
    "tie_word_embeddings": True, "rms_norm_eps": 1e-5, "torch_dtype": "bfloat16",
}


def total_gib(params: str, method: str, seq: int, batch: int, rank: int = 16, **options) -> float:
    return estimate(shape_for_params(parse_params(params)), method, rank=rank, seq=seq, batch=batch, **options).total / GIB


# --- the published figures --------------------------------------------------------------------------
#
# Quoted for "a 7-8B model": full fine-tuning ~100-120 GB, LoRA 24-32 GB, QLoRA 12-20 GB. Those
# figures name no vocabulary, sequence or batch, and here they matter: 7B resolves to Llama-2-7B
# (32k vocabulary) and 8B to Llama-3-8B (128k), whose fp32 loss head is 4x larger per token. The
# settings below are where each model meets all three figures: Llama-3-8B at seq 4096 x batch 1,
# Llama-2-7B at seq 4096 x batch 4 (both ~6 GiB of loss head). At the issue's example (4096 x 2)
# see test_issue_example_is_pinned: 8B LoRA is in range, 8B QLoRA (23.7) and full (141) above it,
# 7B LoRA (20.0) and QLoRA (11.1) below it. Full fine-tuning is within range at any short sequence:
# that figure is the 16 bytes/param rule, activations aside.

PUBLISHED = [
    # params, method, seq, batch, low GiB, high GiB
    ("8B", "full", 4096, 1, 95, 135),
    ("8B", "lora", 4096, 1, 24, 32),
    ("8B", "qlora", 4096, 1, 12, 20),
    ("7B", "full", 4096, 4, 95, 135),
    ("7B", "lora", 4096, 4, 24, 32),
    ("7B", "qlora", 4096, 4, 12, 20),
    ("7B", "full", 512, 1, 95, 135),
    ("8B", "full", 512, 1, 95, 135),
]


@pytest.mark.parametrize("params, method, seq, batch, low, high", PUBLISHED)
def test_published_ranges_for_7b_and_8b(params, method, seq, batch, low, high):
    assert low <= total_gib(params, method, seq, batch) <= high


def test_issue_example_is_pinned():
    """`reg plan --params 8B --method qlora --rank 16 --seq 4096 --batch 2`, and its neighbours.

    Pinned so that a change to a rule of thumb is a deliberate one (update README's figures too).
    """
    expected = {
        ("7B", "full"): 111.6, ("7B", "lora"): 20.0, ("7B", "qlora"): 11.1,
        ("8B", "full"): 141.1, ("8B", "lora"): 31.8, ("8B", "qlora"): 23.7,
        ("70B", "full"): 1127.7, ("70B", "lora"): 165.1, ("70B", "qlora"): 69.8,
    }
    got = {key: round(total_gib(*key, seq=4096, batch=2), 1) for key in expected}
    assert got == pytest.approx(expected, abs=0.15)


def test_70b_qlora_fits_one_80gb_gpu_only_tightly():
    est = estimate(shape_for_params(parse_params("70B")), "qlora", rank=16, seq=4096, batch=2)
    assert 65 <= est.total / GIB <= 80
    eighties = [r for r in recommend(est, load_gpu_table(PACKAGED_GPU_TABLE)) if 79 <= r.memory_gb <= 81]
    assert {r.gpu for r in eighties} == {"A100 80GB", "H100 80GB"}
    for r in eighties:
        assert r.fits_one and r.tight and r.utilisation > 0.85, r
        assert "tight" in r.note
    # shorter sequences leave room: the QLoRA paper's 65B-in-48GB regime
    assert total_gib("70B", "qlora", seq=512, batch=1) < 50


def test_70b_full_fine_tuning_needs_many_gpus():
    est = estimate(shape_for_params(parse_params("70B")), "full", rank=16, seq=4096, batch=2)
    recs = recommend(est, load_gpu_table(PACKAGED_GPU_TABLE))
    assert not any(r.fits_one for r in recs)
    assert all(r.gpus_needed is None or r.gpus_needed >= 8 for r in recs)
    h100 = next(r for r in recs if r.gpu == "H100 80GB")
    assert h100.gpus_needed >= 16 and "ZeRO-3" in h100.note and "multi-node" in h100.note
    assert h100.per_gpu_bytes <= 0.9 * 79.6 * GIB


def test_full_fine_tuning_states_are_16_bytes_per_param():
    shape = shape_for_params(parse_params("8B"))
    est = estimate(shape, "full", seq=512, batch=1)
    assert est.weights + est.gradients + est.optimizer == 16 * shape.params
    assert est.adapter == 0 and est.trainable_params == shape.params


def test_lora_and_qlora_weights_and_adapter_bytes():
    shape = shape_for_params(parse_params("8B"))
    lora, qlora = estimate(shape, "lora", rank=16), estimate(shape, "qlora", rank=16)
    assert lora.weights == 2 * shape.params
    assert lora.trainable_params == adapter_params(shape, 16) == 41_943_040  # PEFT's count for Llama-3-8B, r=16, all-linear
    assert lora.adapter + lora.gradients + lora.optimizer == 16 * lora.trainable_params
    quantized = shape.quantizable_params
    assert qlora.weights == int(quantized * NF4_BYTES_PER_PARAM) + (shape.params - quantized) * 4
    assert NF4_BYTES_PER_PARAM == pytest.approx(0.516, abs=1e-3)


# --- monotonicity -----------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("knob, values", [("rank", (4, 16, 64, 256)), ("seq", (256, 1024, 4096, 16384)), ("batch", (1, 2, 4, 8))])
def test_more_rank_seq_or_batch_never_needs_less(method, knob, values):
    shape = shape_for_params(parse_params("8B"))
    settings = {"rank": 16, "seq": 2048, "batch": 1}
    totals = [estimate(shape, method, **{**settings, knob: v}).total for v in values]
    if method == "full" and knob == "rank":
        assert len(set(totals)) == 1  # full fine-tuning has no rank
    else:
        assert totals == sorted(totals) and len(set(totals)) == len(totals)


def test_bigger_models_need_more_and_methods_are_ordered():
    for method in METHODS:
        totals = [total_gib(p, method, 2048, 1) for p in ("135M", "1B", "3B", "8B", "70B")]
        assert totals == sorted(totals), method
    # Across vocabularies it need not hold: Llama-3-8B's fp32 128k-token embeddings and loss head
    # outweigh Llama-2-13B's extra NF4 layers under QLoRA.
    assert total_gib("13B", "full", 2048, 1) > total_gib("8B", "full", 2048, 1)
    assert total_gib("13B", "qlora", 2048, 1) < total_gib("8B", "qlora", 2048, 1)
    for p in ("135M", "8B", "70B"):
        assert total_gib(p, "qlora", 2048, 1) < total_gib(p, "lora", 2048, 1) < total_gib(p, "full", 2048, 1)


def test_gradient_checkpointing_off_costs_memory_and_says_so():
    shape = shape_for_params(parse_params("8B"))
    on, off = estimate(shape, "lora", seq=4096, batch=2), estimate(shape, "lora", seq=4096, batch=2, gradient_checkpointing=False)
    assert off.activations > 4 * on.activations
    assert any("gradient checkpointing off" in n for n in off.notes)
    assert any("loss head" in n for n in on.notes)


# --- inputs -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("8B", 8_000_000_000), ("135M", 135_000_000), ("7e9", 7_000_000_000), ("70b", 70_000_000_000),
    ("1.5B", 1_500_000_000), (" 13b ", 13_000_000_000), ("1_000_000_000", 1_000_000_000), (8e9, 8_000_000_000),
])
def test_parse_params(text, expected):
    assert parse_params(text) == expected


@pytest.mark.parametrize("bad", ["8X", "abc", "", "-5B", "0", "nan", "1e400", "8 B B", "500K"])
def test_parse_params_errors_name_the_value(bad):
    with pytest.raises(PlanError, match="--params") as info:
        parse_params(bad)
    assert repr(bad) in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("kwargs, named", [
    ({"method": "dora"}, "'dora'"), ({"rank": 0}, "--rank 0"),
    ({"rank": 5000}, "--rank 5000: expected an integer from 1 to 4096"), ({"seq": -1}, "--seq -1"), ({"batch": 1.5}, "--batch 1.5"),
    ({"target": "q_proj,lm_head"}, "'lm_head'"), ({"optimizer": "lion"}, "'lion'"), ({"compute_dtype": "fp8"}, "'fp8'"),
])
def test_estimate_errors_name_the_value(kwargs, named):
    args = {"method": "lora", **kwargs}
    with pytest.raises(PlanError) as info:
        estimate(shape_for_params(parse_params("8B")), **args)
    assert named in str(info.value)


@pytest.mark.parametrize("args, named", [
    (["--params", "1e30"], "--params '1e30': expected between 1M and 10T parameters"),
    (["--params", "20T"], "--params '20T': expected between 1M and 10T parameters"),
    (["--params", "8B", "--rank", "100000"], "--rank 100000: expected an integer from 1 to 4096"),
    (["--params", "8B", "--seq", "2000000"], "--seq 2000000: expected an integer from 1 to 1048576"),
    (["--params", "8B", "--batch", "5000"], "--batch 5000: expected an integer from 1 to 4096"),
    (["--params", "8B", "--batch", "0"], "--batch 0: expected an integer from 1 to 4096"),
])
def test_reg_plan_refuses_inputs_outside_the_planners_range(capsys, home, args, named):
    from cli.main import main

    capsys.readouterr()
    assert main(["plan", *args]) == 2
    out, err = capsys.readouterr()
    assert err == f"error: {named}\n" and out == ""


def test_reg_plan_refuses_absurd_gpu_tables_and_base_shapes(capsys, home, tmp_path):
    from cli.main import main

    table = tmp_path / "gpus.yaml"
    table.write_text("gpus:\n  - {name: Huge, memory_gb: 1.0e+30, usd_per_hour: 1}\n")
    capsys.readouterr()
    assert main(["plan", "--params", "8B", "--gpus", str(table)]) == 2
    assert "memory_gb must be a number > 0, got 1e+30 (at most 4096)" in capsys.readouterr().err
    table.write_text("gpus:\n  - {name: Pricey, memory_gb: 80, usd_per_hour: 1.0e+20}\n")
    assert main(["plan", "--params", "8B", "--gpus", str(table)]) == 2
    assert "usd_per_hour must be a number >= 0, got 1e+20 (at most 10000)" in capsys.readouterr().err
    giant = shape_from_config({**SMOLLM2_CONFIG, "hidden_size": 10**7, "intermediate_size": 10**7}, name="giant")
    with pytest.raises(PlanError, match="'giant': .* parameters, outside the planner's range"):
        plan(giant)


def test_targets_and_optimizers_change_what_they_should():
    shape = shape_for_params(parse_params("8B"))
    assert adapter_params(shape, 16, "qv") < adapter_params(shape, 16, "attention") < adapter_params(shape, 16, "all-linear")
    qv = adapter_params(shape, 16, "qv")
    assert adapter_params(shape, 16, ["q_proj", "v_proj"]) == adapter_params(shape, 16, "q_proj, v_proj") == qv
    adam, adam8 = estimate(shape, "full", optimizer="adamw"), estimate(shape, "full", optimizer="adamw-8bit")
    assert adam.optimizer - adam8.optimizer == 6 * shape.params


# --- model shapes -----------------------------------------------------------------------------------


def test_shape_from_smollm2_config_counts_135m():
    shape = shape_from_config(SMOLLM2_CONFIG, name="smollm2-135m")
    dims = (shape.hidden, shape.layers, shape.vocab, shape.intermediate, shape.heads, shape.kv_heads)
    assert dims == (576, 30, 49152, 1536, 9, 3)
    assert shape.head_dim == 64 and shape.tie_embeddings
    assert shape.params == pytest.approx(135e6, rel=0.05)
    assert shape.params == 134_515_008  # the checkpoint's own count


def test_shape_from_config_errors_and_vlm_text_config():
    with pytest.raises(PlanError, match="hidden_size"):
        shape_from_config({k: v for k, v in SMOLLM2_CONFIG.items() if k != "hidden_size"})
    with pytest.raises(PlanError, match="mixture-of-experts"):
        shape_from_config({**SMOLLM2_CONFIG, "num_local_experts": 8})
    nested = shape_from_config({"model_type": "llava", "text_config": SMOLLM2_CONFIG})
    assert nested.params == shape_from_config(SMOLLM2_CONFIG).params


@pytest.mark.parametrize("known", KNOWN_SHAPES, ids=lambda s: s.name)
def test_known_shapes_match_their_names(known):
    size = known.name.split("-")[-1]
    assert known.params == pytest.approx(parse_params(size), rel=0.1)
    assert shape_for_params(parse_params(size)) == known


@pytest.mark.parametrize("params", ["50M", "1B", "5B", "30B", "180B", "1T"])
def test_interpolated_shapes_land_near_the_count(params):
    n = parse_params(params)
    shape = shape_for_params(n)
    assert shape.params == pytest.approx(n, rel=0.06), shape
    assert shape.hidden % 64 == 0 and shape.heads * shape.head_dim == shape.hidden and shape.heads % shape.kv_heads == 0


# --- the GPU table ----------------------------------------------------------------------------------


def test_every_shipped_gpu_entry_validates():
    raw = yaml.safe_load(PACKAGED_GPU_TABLE.read_text())
    table = load_gpu_table(PACKAGED_GPU_TABLE)
    assert len(table) == len(raw["gpus"])
    assert {"RTX 4090", "L4", "A10G", "L40S", "A100 40GB", "A100 80GB", "H100 80GB", "H200"} <= {g.name for g in table}
    for gpu in table:
        assert 16 <= gpu.memory_gb <= 200 and 0 < gpu.usd_per_hour < 20, gpu


def test_user_price_file_overrides_the_packaged_one(home, tmp_path):
    assert load_gpu_table() == load_gpu_table(PACKAGED_GPU_TABLE)  # no user file yet
    home.mkdir(parents=True, exist_ok=True)
    (home / "gpus.yaml").write_text("gpus:\n  - {name: H100 80GB, memory_gb: 79.6, usd_per_hour: 1.25}\n")
    assert load_gpu_table() == [GpuType("H100 80GB", 79.6, 1.25)]
    explicit = tmp_path / "mine.yaml"
    explicit.write_text("- {name: Tiny, memory_gb: 8, usd_per_hour: 0}\n")  # a bare list is accepted too
    assert load_gpu_table(explicit) == [GpuType("Tiny", 8.0, 0.0)]
    result = plan("8B", seq=4096, batch=2, methods=["qlora"], gpus=load_gpu_table())
    assert result["methods"]["qlora"]["recommendations"][0]["usd_per_hour"] == 1.25


@pytest.mark.parametrize("entry, named", [
    ("{name: X, memory_gb: 24, usd_per_hour: cheap}", "usd_per_hour must be a number >= 0, got 'cheap'"),
    ("{name: X, memory_gb: -1, usd_per_hour: 1}", "memory_gb must be a number > 0, got -1"),
    ("{name: X, memory_gb: 24}", "missing usd_per_hour"),
    ("{name: X, memory_gb: 24, usd_per_hour: 1, price: 2}", "unknown key 'price'"),
    ("{name: '', memory_gb: 24, usd_per_hour: 1}", "name must be non-empty"),
    ("just-a-string", "expected a mapping"),
])
def test_bad_gpu_entries_name_the_key_and_value(tmp_path, entry, named):
    path = tmp_path / "gpus.yaml"
    path.write_text(f"gpus:\n  - {{name: Fine, memory_gb: 24, usd_per_hour: 1}}\n  - {entry}\n")
    with pytest.raises(PlanError) as info:
        load_gpu_table(path)
    assert named in str(info.value) and "entry 2" in str(info.value) and str(path) in str(info.value)


def test_duplicate_and_missing_tables(tmp_path):
    path = tmp_path / "gpus.yaml"
    path.write_text("gpus:\n  - {name: A, memory_gb: 24, usd_per_hour: 1}\n  - {name: A, memory_gb: 48, usd_per_hour: 2}\n")
    with pytest.raises(PlanError, match="'A' appears twice"):
        load_gpu_table(path)
    with pytest.raises(PlanError, match="does not exist"):
        load_gpu_table(tmp_path / "nope.yaml")
    path.write_text("gpus: [\n")
    with pytest.raises(PlanError, match="not valid YAML"):
        load_gpu_table(path)


# --- recommendations and the plan -------------------------------------------------------------------


def test_recommendations_are_sorted_by_cost_and_count_whole_instances():
    gpus = [GpuType("Big", 80, 3.0), GpuType("Small", 24, 0.5), GpuType("Mid", 48, 1.0)]
    recs = recommend(estimate(shape_for_params(parse_params("8B")), "qlora", seq=4096, batch=2), gpus)
    assert [r.gpu for r in recs] == ["Mid", "Small", "Big"]  # 2 x Small (sharded) costs what 1 x Mid does: one GPU first
    assert recs[0].fits_one and not recs[0].tight and recs[0].usd_per_hour == 1.0
    small = recs[1]
    assert not small.fits_one and small.gpus_needed == 2 and "FSDP" in small.note and small.usd_per_hour == 1.0
    full = recommend(estimate(shape_for_params(parse_params("8B")), "full", seq=4096, batch=2), gpus)
    assert all(r.gpus_needed in (None, 1, 2, 4, 8) or r.gpus_needed % 8 == 0 for r in full)


def test_activations_that_no_sharding_can_fix_are_reported():
    est = estimate(shape_for_params(parse_params("70B")), "full", seq=32768, batch=8)
    (rec,) = recommend(est, [GpuType("Small", 24, 0.5)])
    assert rec.gpus_needed is None and rec.usd_per_hour is None and "lower --seq or --batch" in rec.note


def test_plan_is_json_ready_and_renders():
    from rich.console import Console

    result = plan("8B", rank=16, seq=4096, batch=2)
    assert list(result["methods"]) == list(METHODS)
    assert result["model"]["name"] == "Llama-3-8B" and result["model"]["requested_params"] == 8_000_000_000
    again = json.loads(json.dumps(result))
    direct = estimate(shape_for_params(8_000_000_000), "qlora", seq=4096, batch=2)
    assert again["methods"]["qlora"]["memory"]["total"] == direct.total
    console = Console(record=True, width=160)
    console.print(format_plan_table(result))
    console.print(format_gpu_table(result, "qlora"))
    text = console.export_text()
    assert "QLORA" in text and "total" in text and "23.7 GiB" in text and "H200" in text


def test_plan_accepts_a_registered_base_shape():
    shape = shape_from_config(SMOLLM2_CONFIG, name="smollm2-135m")
    result = plan(shape, seq=512, batch=8, methods=["lora"], gpus=[GpuType("T4", 14.6, 0.35)])
    assert result["model"]["name"] == "smollm2-135m" and result["model"]["requested_params"] is None
    (rec,) = result["methods"]["lora"]["recommendations"]
    assert rec["fits_one"] and rec["usd_per_hour"] == 0.35


def test_importing_the_planner_does_not_import_torch_or_rich():
    """The calculator computes; cli/plan_view.py renders (issue 13)."""
    code = "import sys, trainer.plan; sys.exit('torch' in sys.modules or 'rich' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_model_shape_is_constructible_by_hand():
    shape = ModelShape(params=1_000_000_000, hidden=2048, layers=16, vocab=32000, intermediate=5632, heads=32, kv_heads=4)
    assert shape.head_dim == 64 and shape.kv_dim == 256
    assert estimate(shape, "qlora").total < estimate(shape, "lora").total
