"""registry.modeling.merge against PEFT itself: for every method, our merged tensors equal the adapter that
`PeftModel.add_weighted_adapter` builds, and the directory we write gives PEFT's logits.

DARE methods draw random masks. PEFT draws them from torch's global RNG (after building the new
adapter's layers, which consume random numbers too) and we from a per-module seeded generator, so
their equality with PEFT is checked with torch.bernoulli replaced by a fixed mask in both; with real
randomness they are checked by properties (reproducible per seed, density 1 = the plain method, ...).
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import make_adapter_dir

from registry.errors import Conflict, InvalidInput
from registry.modeling.errors import AdapterIncompatible, MergeError
from registry.modeling.lora import LoraTensors, read_lora
from registry.modeling.merge import MERGE_METHODS, merge_adapters, merge_key, write_lora_adapter
from registry.modeling.plain_lora import REFUSED_FIELDS
from server.lora import load_lora_weights

def read_lora_adapter(adapter_dir) -> LoraTensors:
    """An adapter read as the merge path reads it (the server's per-request merges, `reg export --merge`)."""
    return read_lora(adapter_dir, "merge")


INPUT_IDS = torch.tensor([[1, 5, 17, 42, 99, 200, 7, 300]])


def _custom_lora(base_dir, out, seed, **lora_kwargs):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    torch.manual_seed(seed)
    get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", init_lora_weights=False, **lora_kwargs)).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def adapters(tiny_base_dir, tmp_path_factory):
    """Adapters of different ranks, targets, patterns and scalings, all on the tiny base."""
    work = tmp_path_factory.mktemp("merge-adapters")
    seeds = (("q4a", 1), ("q4b", 2), ("q4c", 3))
    dirs = {name: make_adapter_dir(tiny_base_dir, work / name, "lora", seed) for name, seed in seeds}
    dirs["all8"] = make_adapter_dir(tiny_base_dir, work / "all8", "lora-all", seed=4)
    dirs["qk2"] = _custom_lora(tiny_base_dir, work / "qk2", 5, r=2, lora_alpha=3, target_modules=["q_proj", "k_proj"])
    dirs["pat4"] = _custom_lora(
        tiny_base_dir, work / "pat4", 6, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
        rank_pattern={"v_proj": 2}, alpha_pattern={"q_proj": 5},
    )
    for name, seed in (("rs4a", 7), ("rs4b", 8)):
        dirs[name] = _custom_lora(
            tiny_base_dir, work / name, seed, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], use_rslora=True
        )
    return dirs


def _base(base_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(base_dir).eval()


def _peft_with(base_dir, dirs):
    from peft import PeftModel

    model = PeftModel.from_pretrained(_base(base_dir), dirs[0], adapter_name="a0")
    for i, d in enumerate(dirs[1:], start=1):
        model.load_adapter(d, adapter_name=f"a{i}")
    return model.eval()


def _peft_merge(base_dir, dirs, weights, method, **kwargs):
    """PEFT's own merge: (PeftModel with the merged adapter active, {module: (A, B, scaling)})."""
    from peft.tuners.lora import LoraLayer

    model = _peft_with(base_dir, dirs)
    model.add_weighted_adapter([f"a{i}" for i in range(len(dirs))], list(weights), "merged", combination_type=method, **kwargs)
    model.set_adapter("merged")
    tensors = {
        name: (m.lora_A["merged"].weight.detach(), m.lora_B["merged"].weight.detach(), m.scaling["merged"])
        for name, m in model.base_model.model.named_modules()
        if isinstance(m, LoraLayer) and "merged" in m.lora_A
    }
    return model, tensors


def _logits(model):
    with torch.no_grad():
        return model(INPUT_IDS).logits


def _ours(adapters, names, weights, method, **kwargs) -> LoraTensors:
    return merge_adapters([(read_lora_adapter(adapters[n]), w) for n, w in zip(names, weights)], method, **kwargs)


def _assert_same_as_peft(ours: LoraTensors, peft_tensors: dict) -> None:
    assert sorted(ours.modules) == sorted(peft_tensors)
    for module, (A, B, scaling) in peft_tensors.items():
        torch.testing.assert_close(ours.lora_A[module], A, atol=1e-6, rtol=0, msg=f"lora_A of {module}")
        torch.testing.assert_close(ours.lora_B[module], B, atol=1e-6, rtol=0, msg=f"lora_B of {module}")
        assert ours.scaling[module] == pytest.approx(scaling, rel=1e-12), module


def _assert_written_dir_matches(ours, peft_model, base_dir, out_dir) -> None:
    from peft import PeftModel

    written = write_lora_adapter(ours, out_dir, str(base_dir))
    loaded = PeftModel.from_pretrained(_base(base_dir), written).eval()
    expected = _logits(peft_model)
    torch.testing.assert_close(_logits(loaded), expected, atol=1e-5, rtol=1e-5)
    with peft_model.disable_adapter():
        assert not torch.allclose(_logits(peft_model), expected, atol=1e-3), "the merged adapter should change the outputs"


EXACT_CASES = [
    # id, adapters, weights, method, options
    ("linear", ["q4a", "q4b"], [0.7, 0.3], "linear", {}),
    ("linear-3-negative", ["q4a", "q4b", "q4c"], [1.0, -0.5, 0.25], "linear", {}),
    ("linear-rslora", ["rs4a", "rs4b"], [0.7, 0.3], "linear", {}),
    ("cat-ranks-and-targets", ["q4a", "qk2", "all8"], [0.7, -0.3, 0.5], "cat", {}),
    ("cat-rank-alpha-patterns", ["pat4", "q4a"], [1.0, 0.5], "cat", {}),
    ("cat-rslora", ["rs4a", "rs4b"], [0.7, 0.3], "cat", {}),
    ("svd", ["q4a", "all8"], [0.7, 0.3], "svd", {}),
    ("svd-rank-negative", ["q4a", "qk2", "all8"], [1.0, -0.5, 0.25], "svd", {"svd_rank": 3}),
    ("svd-clamp", ["q4a", "all8"], [0.7, 0.3], "svd", {"svd_clamp": 0.99}),
    ("ties", ["q4a", "q4b", "q4c"], [0.7, 0.3, -0.4], "ties", {"density": 0.5}),
    ("ties-frequency", ["q4a", "q4b", "q4c"], [0.5, 0.5, 0.5], "ties", {"density": 0.3, "majority_sign_method": "frequency"}),
    ("ties_svd", ["q4a", "all8"], [0.6, 0.4], "ties_svd", {"density": 0.5}),
    ("magnitude_prune", ["q4a", "q4b"], [0.7, -0.3], "magnitude_prune", {"density": 0.4}),
    ("magnitude_prune_svd", ["qk2", "all8"], [0.5, 0.5], "magnitude_prune_svd", {"density": 0.6}),
    ("one-adapter-is-linear", ["q4b"], [0.5], "cat", {}),
]


@pytest.mark.parametrize("names,weights,method,options", [c[1:] for c in EXACT_CASES], ids=[c[0] for c in EXACT_CASES])
def test_merge_equals_peft(adapters, tiny_base_dir, tmp_path, names, weights, method, options):
    ours = _ours(adapters, names, weights, method, **options)
    peft_model, peft_tensors = _peft_merge(tiny_base_dir, [adapters[n] for n in names], weights, method, **options)
    _assert_same_as_peft(ours, peft_tensors)
    _assert_written_dir_matches(ours, peft_model, tiny_base_dir, tmp_path / "merged")


def _fixed_bernoulli(probabilities, generator=None):
    """A stand-in for torch.bernoulli that keeps two of every three entries, whatever the RNG."""
    keep = torch.arange(probabilities.numel(), device=probabilities.device) % 3 != 1
    return keep.to(probabilities.dtype).reshape(probabilities.shape)


DARE_CASES = [
    ("dare_linear", ["q4a", "q4b"], [0.7, 0.3], {"density": 0.5}),
    ("dare_ties", ["q4a", "q4b", "q4c"], [0.7, -0.3, 0.5], {"density": 0.5}),
    ("dare_ties", ["q4a", "q4b", "q4c"], [0.4, 0.4, 0.2], {"density": 0.7, "majority_sign_method": "frequency"}),
    ("dare_linear_svd", ["q4a", "all8"], [0.7, 0.3], {"density": 0.5}),
    ("dare_ties_svd", ["q4a", "qk2", "all8"], [1.0, -0.5, 0.25], {"density": 0.5}),
]


@pytest.mark.parametrize("method,names,weights,options", DARE_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(DARE_CASES)])
def test_dare_equals_peft_given_the_same_mask(adapters, tiny_base_dir, tmp_path, monkeypatch, method, names, weights, options):
    monkeypatch.setattr(torch, "bernoulli", _fixed_bernoulli)
    ours = _ours(adapters, names, weights, method, **options)
    peft_model, peft_tensors = _peft_merge(tiny_base_dir, [adapters[n] for n in names], weights, method, **options)
    _assert_same_as_peft(ours, peft_tensors)
    _assert_written_dir_matches(ours, peft_model, tiny_base_dir, tmp_path / "merged")


def test_dare_is_seeded_and_leaves_the_global_rng_alone(adapters):
    inputs = [(read_lora_adapter(adapters[n]), w) for n, w in (("q4a", 0.7), ("q4b", 0.3))]
    state = torch.get_rng_state()
    first = merge_adapters(inputs, "dare_ties", density=0.5, seed=3)
    again = merge_adapters(inputs, "dare_ties", density=0.5, seed=3)
    other = merge_adapters(inputs, "dare_ties", density=0.5, seed=4)
    assert torch.equal(torch.get_rng_state(), state)
    for m in first.modules:
        assert torch.equal(first.lora_A[m], again.lora_A[m]) and torch.equal(first.lora_B[m], again.lora_B[m])
    assert any(not torch.equal(first.lora_A[m], other.lora_A[m]) for m in first.modules)


def test_dare_keeps_about_density_of_the_entries_rescaled(adapters):
    # With the second weight 0, dare_linear's A is sqrt(s) * mask * A1 / density.
    a1 = read_lora_adapter(adapters["q4a"])
    merged = merge_adapters([(a1, 1.0), (read_lora_adapter(adapters["q4b"]), 0.0)], "dare_linear", density=0.3, seed=1)
    kept = total = 0
    for m in a1.modules:
        expected = math.sqrt(a1.scaling[m]) * a1.lora_A[m] / 0.3
        nonzero = merged.lora_A[m] != 0
        torch.testing.assert_close(merged.lora_A[m][nonzero], expected[nonzero])
        kept, total = kept + int(nonzero.sum()), total + nonzero.numel()
    assert 0.25 < kept / total < 0.35


@pytest.mark.filterwarnings("ignore:The density 1.0 is greater")  # PEFT's prune() says it skips pruning
@pytest.mark.parametrize("dare,plain", [("dare_linear", "linear"), ("dare_ties", "ties"), ("dare_linear_svd", "svd")])
def test_dare_with_density_one_is_the_plain_method(adapters, dare, plain):
    names = ["q4a", "q4b"] if not dare.endswith("svd") else ["q4a", "all8"]
    inputs = [(read_lora_adapter(adapters[n]), w) for n, w in zip(names, (0.7, -0.3))]
    a = merge_adapters(inputs, dare, density=1.0)
    b = merge_adapters(inputs, plain, density=1.0)
    for m in a.modules:
        assert torch.equal(a.lora_A[m], b.lora_A[m]) and torch.equal(a.lora_B[m], b.lora_B[m])


def test_cat_output_is_the_weighted_sum_of_deltas(adapters):
    inputs = [(read_lora_adapter(adapters[n]), w) for n, w in (("q4a", 0.7), ("qk2", -0.3), ("all8", 0.5))]
    merged = merge_adapters(inputs, "cat")
    assert merged.config["r"] == 4 + 2 + 8 and merged.scaling[merged.modules[0]] == 1.0
    for m in merged.modules:
        expected = sum(w * a.delta(m) for a, w in inputs if m in a.lora_A)
        torch.testing.assert_close(merged.delta(m), expected, atol=1e-6, rtol=1e-5)


def test_rslora_merge_keeps_peft_scaling(adapters):
    """PEFT gives the new adapter r = lora_alpha = new rank and the first adapter's use_rslora, so with
    rsLoRA inputs its scaling is sqrt(new rank), not 1: the merged delta is that much larger. We keep that."""
    inputs = [(read_lora_adapter(adapters[n]), w) for n, w in (("rs4a", 0.7), ("rs4b", 0.3))]
    merged = merge_adapters(inputs, "cat")
    for m in merged.modules:
        assert merged.scaling[m] == 8 / math.sqrt(8)
        expected = sum(w * a.delta(m) for a, w in inputs) * math.sqrt(8)
        torch.testing.assert_close(merged.delta(m), expected, atol=1e-6, rtol=1e-5)


# --- reading and writing -------------------------------------------------------------------------------


def test_read_matches_peft_layers(adapters, tiny_base_dir):
    """Module names, tensors and scaling (rank/alpha patterns, rsLoRA) are what PEFT loads."""
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    for name in ("pat4", "rs4a", "all8"):
        ours = read_lora_adapter(adapters[name])
        model = PeftModel.from_pretrained(_base(tiny_base_dir), adapters[name])
        layers = {n: m for n, m in model.base_model.model.named_modules() if isinstance(m, LoraLayer)}
        assert sorted(ours.modules) == sorted(layers)
        for m, layer in layers.items():
            assert torch.equal(ours.lora_A[m], layer.lora_A["default"].weight)
            assert torch.equal(ours.lora_B[m], layer.lora_B["default"].weight)
            assert ours.scaling[m] == layer.scaling["default"], (name, m)


def test_write_read_round_trip_keeps_patterns_and_outputs(adapters, tiny_base_dir, tmp_path):
    from peft import PeftModel

    original = read_lora_adapter(adapters["pat4"])
    out = write_lora_adapter(original, tmp_path / "copy", str(tiny_base_dir))
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8 and config["base_model_name_or_path"] == str(tiny_base_dir)
    assert set(config["rank_pattern"].values()) == {2} and set(config["alpha_pattern"].values()) == {5}
    assert config["target_modules"] == sorted(original.modules)
    copy = read_lora_adapter(out)
    assert copy.modules == original.modules and copy.scaling == original.scaling
    for m in original.modules:
        assert torch.equal(copy.lora_A[m], original.lora_A[m]) and torch.equal(copy.lora_B[m], original.lora_B[m])
    a = _logits(PeftModel.from_pretrained(_base(tiny_base_dir), adapters["pat4"]).eval())
    b = _logits(PeftModel.from_pretrained(_base(tiny_base_dir), out).eval())
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_write_refuses_a_non_empty_directory(adapters, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    with pytest.raises(Conflict, match="not an empty directory"):
        write_lora_adapter(read_lora_adapter(adapters["q4a"]), tmp_path / "out", "tiny")


# --- errors --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def read(adapters):
    return {name: read_lora_adapter(adapters[name]) for name in ("q4a", "q4b", "all8")}


def test_merge_error_is_invalid_input():
    assert issubclass(MergeError, InvalidInput)


BAD_MERGES = [
    # id, which of (q4a, q4b, all8) with weights, method, options, the error's message
    ("method", {"q4a": 1, "q4b": 1}, "average", {}, r"unknown merge method 'average'; choose one of cat, linear, svd"),
    ("empty", {}, "cat", {}, "at least one adapter"),
    ("linear-ranks", {"q4a": 0.5, "all8": 0.5}, "linear", {}, r"'linear' needs adapters of one rank, got ranks \[4, 8\]"),
    ("ties-ranks", {"q4a": 0.5, "all8": 0.5}, "ties", {"density": 0.5}, r"one rank, got ranks \[4, 8\]"),
    ("no-density", {"q4a": 0.5, "q4b": 0.5}, "ties", {}, "'ties' needs a density"),
    ("density-0", {"q4a": 0.5, "q4b": 0.5}, "dare_linear", {"density": 0}, r"density 0 must be .* 0 < density <= 1"),
    ("density-1.5", {"q4a": 0.5, "q4b": 0.5}, "ties", {"density": 1.5}, "density 1.5"),
    ("sign", {"q4a": 0.5, "q4b": 0.5}, "ties", {"density": 0.5, "majority_sign_method": "vote"}, "majority_sign_method 'vote'"),
    ("nan", {"q4a": float("nan"), "q4b": 0.5}, "cat", {}, "merge weight nan"),
    ("svd-rank-0", {"q4a": 0.5, "q4b": 0.5}, "svd", {"svd_rank": 0}, "svd_rank 0"),
    ("svd-rank-big", {"q4a": 0.5, "q4b": 0.5}, "svd", {"svd_rank": 65}, "svd_rank 65 is larger"),
]


@pytest.mark.parametrize("chosen,method,options,match", [c[1:] for c in BAD_MERGES], ids=[c[0] for c in BAD_MERGES])
def test_merge_errors(read, chosen, method, options, match):
    with pytest.raises(MergeError, match=match):
        merge_adapters([(read[name], weight) for name, weight in chosen.items()], method, **options)


def test_merge_inputs_must_be_adapter_tensors(read):
    with pytest.raises(MergeError, match="merge input 1 must be"):
        merge_adapters([(read["q4a"], 0.5), ("q4b", 0.5)], "cat")


def test_peft_refuses_the_same_rank_mismatch(adapters, tiny_base_dir):
    """Our rank rule is PEFT's: linear over ranks 4 and 8 fails there too."""
    model = _peft_with(tiny_base_dir, [adapters["q4a"], adapters["all8"]])
    with pytest.raises(ValueError, match="same r value"):
        model.add_weighted_adapter(["a0", "a1"], [0.5, 0.5], "merged", combination_type="linear")


def test_per_module_rank_mismatch_is_refused(adapters):
    # Both declare r=4, but pat4's v_proj has rank 2: PEFT fails on torch.stack, we name the module.
    inputs = [(read_lora_adapter(adapters["pat4"]), 0.5), (read_lora_adapter(adapters["q4a"]), 0.5)]
    with pytest.raises(MergeError, match=r"v_proj' has ranks \[2, 4\]"):
        merge_adapters(inputs, "linear")


def test_adapters_of_another_base_are_refused(adapters, other_base_dir, tmp_path):
    wide = read_lora_adapter(make_adapter_dir(other_base_dir, tmp_path / "wide", "lora", seed=1))
    with pytest.raises(MergeError, match="different shapes .* same base"):
        merge_adapters([(read_lora_adapter(adapters["q4a"]), 0.5), (wide, 0.5)], "cat")


@pytest.mark.parametrize(
    "kind,match", [("ia3", "a IA3 adapter cannot be merged"), ("prefix", "PREFIX_TUNING adapter"), ("dora", "use_dora=true")]
)
def test_non_lora_adapters_are_refused(tiny_base_dir, tmp_path, kind, match):
    with pytest.raises(MergeError, match=match):
        read_lora_adapter(make_adapter_dir(tiny_base_dir, tmp_path / kind, kind, seed=0))


def test_modules_to_save_is_refused(tiny_base_dir, tmp_path):
    out = _custom_lora(tiny_base_dir, tmp_path / "mts", 0, r=4, target_modules=["q_proj"], modules_to_save=["lm_head"])
    with pytest.raises(MergeError, match="modules_to_save"):
        read_lora_adapter(out)


# --- keys ----------------------------------------------------------------------------------------------


def test_merge_key():
    assert merge_key([("arith:3", 0.7), ("shout:2", 0.3)], "cat") == "merge(arith:3*0.7+shout:2*0.3,cat)"
    assert merge_key([("shout:2", 0.3), ("arith:3", 0.7)], "cat") == "merge(shout:2*0.3+arith:3*0.7,cat)"
    assert merge_key([("a:1", 1), ("b:1", -0.5)], "ties", density=0.5) == "merge(a:1*1+b:1*-0.5,ties,density=0.5)"
    assert merge_key([("a:1", 1), ("b:1", 1)], "dare_ties", density=0.5, majority_sign_method="frequency", seed=2) == (
        "merge(a:1*1+b:1*1,dare_ties,density=0.5,sign=frequency,seed=2)"
    )
    assert merge_key([("a:1", 1), ("b:1", 1)], "svd", svd_rank=8, density=0.5) == "merge(a:1*1+b:1*1,svd,rank=8)"
    assert merge_key([("a:1", 0.5)], "cat") == "merge(a:1*0.5,linear)"
    assert merge_key([("a:1", 1 / 3), ("b:1", 0.3333333)], "linear") != merge_key([("a:1", 0.3333333), ("b:1", 1 / 3)], "linear")
    with pytest.raises(MergeError, match="unknown merge method 'avg'"):
        merge_key([("a:1", 1)], "avg")
    with pytest.raises(MergeError, match="at least one adapter"):
        merge_key([], "cat")


def test_every_method_is_covered():
    covered = {c[3] for c in EXACT_CASES} | {c[0] for c in DARE_CASES}
    assert covered == set(MERGE_METHODS)


# Plain-LoRA tensors under a config that says they mean something else: served as plain LoRA they would be
# silently wrong, so the slot path (server/lora.py) and the merge path (registry/modeling/merge.py) must both refuse them.
NOT_PLAIN = {field: [1, 2] if field == "alora_invocation_tokens" else {"x": 1} if field.endswith("_config") else True
             for field in REFUSED_FIELDS}
NOT_PLAIN.update({"modules_to_save": ["lm_head"], "target_parameters": ["mlp.experts"], "layer_replication": [[0, 2]],
                  "init_lora_weights": "pissa_niter_4", "bias": "all"})


@pytest.mark.parametrize("field", sorted(NOT_PLAIN))
def test_the_merge_path_refuses_what_the_adapter_path_refuses(adapters, tmp_path, field):
    import shutil

    relabelled = shutil.copytree(adapters["q4a"], tmp_path / field)
    config = json.loads((relabelled / "adapter_config.json").read_text())
    config[field] = NOT_PLAIN[field]
    (relabelled / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(AdapterIncompatible) as served:
        load_lora_weights(relabelled)
    with pytest.raises(MergeError) as merged:
        read_lora_adapter(relabelled)
    assert field in str(served.value) and field in str(merged.value), (str(served.value), str(merged.value))


@pytest.mark.parametrize("field", ["rank_pattern", "alpha_pattern"])
def test_a_regex_pattern_key_is_refused_before_it_runs(adapters, tmp_path, field):
    """A pushed adapter may carry any rank_pattern key; the server must not run an author's regex (ReDoS)."""
    import shutil

    crafted = shutil.copytree(adapters["q4a"], tmp_path / field)
    config = json.loads((crafted / "adapter_config.json").read_text())
    config[field] = {"(a|aa)+$": 4}  # exponential on a long run of "a"s in Python's backtracking engine
    (crafted / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(AdapterIncompatible, match=f"{field} key '\\(a\\|aa\\)\\+\\$' is a regular expression"):
        load_lora_weights(crafted)
    with pytest.raises(MergeError, match="is a regular expression, which loradock does not run"):
        read_lora_adapter(crafted)
