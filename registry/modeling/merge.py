"""Weighted merges of LoRA adapters on plain tensors, made the way PEFT's `add_weighted_adapter` makes them.

PEFT only merges adapters that are loaded into a `PeftModel` around the base model. The
server merges per request and `reg export --merge` merges offline, so both work here on
the adapters' tensors instead: `read_lora(dir, "merge")` (lora.py) reads a directory, `merge_adapters`
builds the combined adapter, `write_lora_adapter` saves it as a directory PEFT loads, and
`fold_lora` adds one into a full-precision base's weights (`reg export`'s merged format).
Imports torch only when called.

The math is PEFT's, step for step (peft/tuners/lora/model.py: `_check_add_weighted_adapter`,
`add_weighted_adapter`, `_generalized_task_arithmetic_weighted_adapter`,
`_svd_generalized_task_arithmetic_weighted_adapter`), and the tensor-level combiners are
PEFT's own public `peft.utils.merge_utils`, so the merged tensors equal PEFT's. Differences,
all on purpose:

* DARE methods draw their random masks from a generator seeded per module from `seed`,
  not from torch's global RNG, so a merge is reproducible and independent of module order
  and of whatever else consumed random numbers. PEFT's masks come from the global RNG.
* The merged adapter covers exactly the modules the inputs hold. PEFT builds the new
  adapter from the first adapter's config, so its `layers_to_transform`/`exclude_modules`
  could drop modules the other adapters hold; with plain target lists the two agree.
* PEFT refuses to mix adapters whose `target_modules` are a regex string and a list
  (a limit of building one config); we work on module names and do not need that rule.

One PEFT behaviour is kept although it is surprising: the new adapter copies the first
adapter's `use_rslora`, with `r = lora_alpha = new rank`, so with rsLoRA its scaling is
sqrt(new rank) rather than 1 and the merged delta is that much larger. `scaling` says so.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from ..adapters import CONFIG_FILE, WEIGHTS_FILE
from ..errors import Conflict
from .errors import MergeError
from .lora import LoraTensors, lora_key

if TYPE_CHECKING:
    import torch

MERGE_METHODS = (
    "cat", "linear", "svd", "ties", "ties_svd", "dare_linear", "dare_ties",
    "dare_linear_svd", "dare_ties_svd", "magnitude_prune", "magnitude_prune_svd",
)
# Methods that combine the A and B matrices directly, so every adapter must have the same rank.
SAME_RANK_METHODS = ("linear", "ties", "dare_linear", "dare_ties", "magnitude_prune")
# Methods that combine the full delta weights and factor the result again with an SVD.
SVD_METHODS = tuple(m for m in MERGE_METHODS if m.endswith("svd"))
# Methods that prune, and so need `density`.
DENSITY_METHODS = tuple(m for m in MERGE_METHODS if m.startswith(("ties", "dare", "magnitude_prune")))
# Methods that elect a sign per entry, and so use `majority_sign_method`.
SIGN_METHODS = tuple(m for m in MERGE_METHODS if "ties" in m)
MAJORITY_SIGN_METHODS = ("total", "frequency")

def merge_adapters(
    adapters: list[tuple[LoraTensors, float]],
    method: str = "cat",
    density: float | None = None,
    majority_sign_method: str = "total",
    svd_rank: int | None = None,
    seed: int = 0,
    svd_clamp: float | None = None,
) -> LoraTensors:
    """Combine `adapters` (each with its weight) into one adapter, as `PeftModel.add_weighted_adapter` does.

    `method` is PEFT's `combination_type`. `cat` and `svd` reproduce the weighted sum of the deltas
    (`cat` exactly, with rank = the sum of ranks; `svd` up to its rank, default the largest input rank);
    the others combine A and B matrices (ties, dare and magnitude_prune prune to `density` first) and need
    equal ranks. With one adapter PEFT always uses `linear`, and so do we. The result's scaling is what PEFT
    gives the new adapter (`r = lora_alpha = new rank`), so `delta()` equals the merged adapter's update.
    """
    method = _check_merge_args(adapters, method, density, majority_sign_method, svd_rank, svd_clamp)
    first = adapters[0][0]
    ranks = [adapter.declared_rank() for adapter, _ in adapters]
    if method in SAME_RANK_METHODS:
        if len(set(ranks)) != 1:
            raise MergeError(
                f"merge method {method!r} needs adapters of one rank, got ranks {ranks}; "
                f"'cat' and the *_svd methods ({', '.join(SVD_METHODS)}) merge adapters of different ranks"
            )
        new_rank = ranks[0]
    elif method == "cat":
        new_rank = sum(ranks)
    else:
        new_rank = svd_rank or max(ranks)

    modules = list(dict.fromkeys(m for adapter, _ in adapters for m in adapter.modules))
    _check_shapes(adapters, modules)
    lora_A: dict[str, torch.Tensor] = {}
    lora_B: dict[str, torch.Tensor] = {}
    for module in modules:
        present = [(adapter, float(weight)) for adapter, weight in adapters if module in adapter.lora_A]
        generator = _module_generator(seed, module, present[0][0].lora_A[module].device) if method.startswith("dare") else None
        if method == "cat":
            lora_A[module], lora_B[module] = _cat(present, module, new_rank)
        elif method in SVD_METHODS:
            lora_A[module], lora_B[module] = _svd(
                method, present, module, new_rank, density, majority_sign_method, svd_clamp, generator
            )
        else:
            lora_A[module], lora_B[module] = _task_arithmetic(method, present, module, density, majority_sign_method, generator)

    use_rslora = bool(first.config.get("use_rslora"))
    new_scaling = new_rank / math.sqrt(new_rank) if use_rslora else new_rank / new_rank
    config = dict(first.config)
    config.update(
        r=new_rank, lora_alpha=new_rank, target_modules=sorted(modules), rank_pattern={}, alpha_pattern={},
        layers_to_transform=None, layers_pattern=None, exclude_modules=None,
    )
    return LoraTensors(lora_A, lora_B, {m: new_scaling for m in modules}, config)


def write_lora_adapter(adapter: LoraTensors, out_dir: Path, base_model_name_or_path: str) -> Path:
    """Save `adapter` as a PEFT LoRA directory (adapter_config.json + adapter_model.safetensors); return `out_dir`.

    `target_modules` lists the full module names, so PEFT adapts exactly these modules; `r` and
    `lora_alpha` are the most common rank and alpha (the config's own on a tie), with
    `rank_pattern`/`alpha_pattern` (full module names) for modules that differ. Other config keys are
    kept from `adapter.config`. `out_dir` must not exist or be empty.
    """
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise Conflict(f"{out_dir}: already exists and is not an empty directory; choose a new output directory")
    if not adapter.modules:
        raise MergeError("cannot write an adapter with no modules")
    use_rslora = bool(adapter.config.get("use_rslora"))
    ranks = {m: adapter.module_rank(m) for m in adapter.modules}
    alphas = {m: _alpha_for(adapter.scaling[m], ranks[m], use_rslora) for m in adapter.modules}
    r = _most_common(ranks.values(), prefer=adapter.config.get("r"))
    lora_alpha = _most_common(alphas.values(), prefer=adapter.config.get("lora_alpha"))

    config = dict(adapter.config)
    config.update(
        peft_type="LORA", base_model_name_or_path=base_model_name_or_path, inference_mode=True,
        r=r, lora_alpha=lora_alpha, use_rslora=use_rslora, target_modules=sorted(adapter.modules),
        rank_pattern={m: k for m, k in ranks.items() if k != r},
        alpha_pattern={m: a for m, a in alphas.items() if a != lora_alpha},
        layers_to_transform=None, layers_pattern=None, exclude_modules=None, modules_to_save=None,
        use_dora=False, lora_bias=False,
    )
    config.setdefault("task_type", "CAUSAL_LM")
    tensors = {}
    for m in adapter.modules:
        tensors[lora_key(m, "A")] = adapter.lora_A[m].detach().contiguous()
        tensors[lora_key(m, "B")] = adapter.lora_B[m].detach().contiguous()
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, out_dir / WEIGHTS_FILE, metadata={"format": "pt"})
    (out_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return out_dir


def merge_key(
    refs_and_weights: list[tuple[str, float]],
    method: str,
    *,
    density: float | None = None,
    majority_sign_method: str = "total",
    svd_rank: int | None = None,
    seed: int = 0,
    svd_clamp: float | None = None,
) -> str:
    """A stable cache key and display string for a merge, e.g. `merge(arith:3*0.7+shout:2*0.3,cat)`.

    Pass resolved refs (`NAME:VERSION`) so the key names fixed bytes. The order is kept: the outputs of
    every method but the DARE ones do not depend on it, but `cat` stacks A/B rows in input order, so
    the merged bytes (and thus what a cache would hold) do. Options that change the result for this
    method are appended when they differ from the defaults (`density` always, for the methods that need it).
    With one adapter the method is shown as `linear`, the one PEFT (and `merge_adapters`) then uses.
    """
    if not refs_and_weights:
        raise MergeError("a merge needs at least one adapter, got none")
    if method not in MERGE_METHODS:
        raise MergeError(f"unknown merge method {method!r}; choose one of {', '.join(MERGE_METHODS)}")
    if len(refs_and_weights) == 1:
        method = "linear"
    parts = "+".join(f"{ref}*{_format_number(weight)}" for ref, weight in refs_and_weights)
    options = [method]
    if method in DENSITY_METHODS and density is not None:
        options.append(f"density={_format_number(density)}")
    if method in SIGN_METHODS and majority_sign_method != "total":
        options.append(f"sign={majority_sign_method}")
    if method in SVD_METHODS and svd_rank is not None:
        options.append(f"rank={svd_rank}")
    if method in SVD_METHODS and svd_clamp is not None:
        options.append(f"clamp={_format_number(svd_clamp)}")
    if method.startswith("dare") and seed != 0:
        options.append(f"seed={seed}")
    return f"merge({parts},{','.join(options)})"


def check_merge_options(method: str, count: int, density: float | None, sign: str, names: tuple[str, str, str]) -> None:
    """`density` and the majority-sign method of a merge of `count` adapters, before any file is read; `names`
    spell (method, density, sign) as the caller's user writes them (request fields, or CLI flags)."""
    method_name, density_name, sign_name = names
    if density is not None and not (math.isfinite(density) and 0 < density <= 1):
        raise MergeError(f"{density_name} {density}: allowed 0 < density <= 1 (the fraction of values kept)")
    if density is None and method in DENSITY_METHODS and count > 1:  # one adapter is merged with linear, as in PEFT
        raise MergeError(f"{method_name} {method} needs {density_name} (0 < density <= 1, the fraction of values kept)")
    if sign not in MAJORITY_SIGN_METHODS:
        raise MergeError(f"{sign_name} {sign[:64]!r}: use one of {', '.join(MAJORITY_SIGN_METHODS)}")
    if sign != "total" and method not in SIGN_METHODS:
        raise MergeError(f"{sign_name} applies to {', '.join(SIGN_METHODS)}, not {method_name} {method}")


def fold_lora(model, adapter: LoraTensors) -> None:
    """Add each module's LoRA update `B @ A * scaling` to its weight, in the weight's precision (PEFT's merge of a Linear)."""
    import torch

    shared = Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))
    for name in adapter.modules:
        try:
            weight = model.get_submodule(name).weight
        except AttributeError:
            raise MergeError(f"the adapter names module {name!r}, which the base model does not have") from None
        delta = adapter.delta(name)
        if adapter.config.get("fan_in_fan_out"):
            delta = delta.T
        if tuple(delta.shape) != tuple(weight.shape):
            raise MergeError(f"module {name!r}: the adapter's update has shape {list(delta.shape)}, "
                             f"the weight {list(weight.shape)}")
        if shared[id(weight)] > 1:
            raise MergeError(f"module {name!r} shares its weight with another module (tied embeddings); "
                             "merging would change both")
        with torch.no_grad():
            weight += delta.to(weight.device, weight.dtype)


# --- the combiners, one per family of PEFT's combination types ------------------------------------------


def _cat(present: list[tuple[LoraTensors, float]], module: str, new_rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    # PEFT folds weight and scaling into A (in this order: A * weight * scaling) and stacks the ranks.
    A = torch.cat([adapter.lora_A[module] * weight * adapter.scaling[module] for adapter, weight in present], dim=0)
    B = torch.cat([adapter.lora_B[module] for adapter, _ in present], dim=1)
    # The new adapter has the summed rank of all inputs; rows of inputs missing here stay zero, as in PEFT.
    A_full = torch.zeros(new_rank, A.shape[1], dtype=A.dtype, device=A.device)
    B_full = torch.zeros(B.shape[0], new_rank, dtype=B.dtype, device=B.device)
    A_full[: A.shape[0], :] = A
    B_full[:, : B.shape[1]] = B
    return A_full, B_full


def _task_arithmetic(method, present, module, density, majority_sign_method, generator) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    weights_A, weights_B = [], []
    for adapter, weight in present:
        # sqrt(|w*s|) on both sides and the sign on A only, so B @ A carries w*s once.
        weight_with_scaling = weight * adapter.scaling[module]
        sign = 1 if weight_with_scaling >= 0 else -1
        weights_A.append(math.sqrt(abs(weight_with_scaling)) * sign)
        weights_B.append(math.sqrt(abs(weight_with_scaling)))
    As = [adapter.lora_A[module] for adapter, _ in present]
    Bs = [adapter.lora_B[module] for adapter, _ in present]
    ranks = {t.shape[0] for t in As}
    if len(ranks) != 1:
        raise MergeError(f"merge method {method!r} needs one rank per module, but {module!r} has ranks {sorted(ranks)}")
    dtype = As[0].dtype
    merged = []
    for tensors, weights in ((As, weights_A), (Bs, weights_B)):
        weights = torch.tensor(weights).to(tensors[0].device)
        merged.append(_combine(method, tensors, weights, density, majority_sign_method, generator).to(dtype))
    return merged[0], merged[1]


def _svd(method, present, module, new_rank, density, majority_sign_method, clamp, generator) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    deltas = [adapter.delta(module) for adapter, _ in present]
    weights = torch.tensor([weight for _, weight in present]).to(deltas[0].device)
    combiner = "linear" if method == "svd" else method.removesuffix("_svd")
    delta = _combine(combiner, deltas, weights, density, majority_sign_method, generator)
    if new_rank > min(delta.shape):
        raise MergeError(f"svd_rank {new_rank} is larger than module {module!r} allows ({min(delta.shape)}, its smaller side)")
    # Factor the combined delta back into rank new_rank (PEFT follows kohya-ss's svd_merge_lora).
    U, S, Vh = torch.linalg.svd(delta, full_matrices=True)
    U = U[:, :new_rank] @ torch.diag(S[:new_rank])
    Vh = Vh[:new_rank, :]
    if clamp is not None:
        hi = torch.quantile(torch.cat([U.flatten(), Vh.flatten()]), clamp)
        U, Vh = U.clamp(-hi, hi), Vh.clamp(-hi, hi)
    return Vh, U


def _combine(method, tensors, weights, density, majority_sign_method, generator) -> torch.Tensor:
    """Weighted combination of same-shaped tensors by one of PEFT's merge_utils methods."""
    import torch
    from peft.utils import merge_utils

    if method == "linear":
        return merge_utils.task_arithmetic(tensors, weights)
    if method == "ties":
        return merge_utils.ties(tensors, weights, density, majority_sign_method)
    if method == "magnitude_prune":
        return merge_utils.magnitude_prune(tensors, weights, density)
    # DARE: PEFT's dare_linear/dare_ties, with the random mask drawn from our seeded generator.
    pruned = torch.stack([_random_prune(t, density, generator) for t in tensors], dim=0)
    weighted = pruned * merge_utils.reshape_weight_task_tensors(pruned, weights)
    if method == "dare_linear":
        return weighted.sum(dim=0)
    if method == "dare_ties":
        mask = merge_utils.calculate_majority_sign_mask(pruned, method=majority_sign_method)
        return merge_utils.disjoint_merge(weighted, mask)
    raise AssertionError(method)


def _random_prune(tensor: torch.Tensor, density: float, generator: torch.Generator) -> torch.Tensor:
    import torch

    # merge_utils.prune(method="random", rescale=True), but with an explicit generator.
    if density >= 1:
        return tensor
    mask = torch.bernoulli(torch.full_like(tensor, density), generator=generator)
    return tensor * mask / density


# --- checks and small helpers --------------------------------------------------------------------------


def _check_merge_args(adapters, method, density, majority_sign_method, svd_rank, svd_clamp) -> str:
    """Validate a merge request; return the method PEFT would actually use (`linear` for one adapter)."""
    if method not in MERGE_METHODS:
        raise MergeError(f"unknown merge method {method!r}; choose one of {', '.join(MERGE_METHODS)}")
    if not adapters:
        raise MergeError("a merge needs at least one adapter, got none")
    for i, item in enumerate(adapters):
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], LoraTensors)):
            raise MergeError(f"merge input {i} must be (LoraTensors, weight), got {type(item).__name__}")
        weight = item[1]
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise MergeError(f"merge weight {weight!r} of adapter {i} must be a finite number")
    effective = "linear" if len(adapters) == 1 else method
    if effective in DENSITY_METHODS:
        if density is None:
            raise MergeError(f"merge method {method!r} needs a density (the fraction of values kept, 0 < density <= 1)")
        if isinstance(density, bool) or not isinstance(density, (int, float)) or not 0 < density <= 1:
            raise MergeError(f"density {density!r} must be a number with 0 < density <= 1")
    if effective in SIGN_METHODS and majority_sign_method not in MAJORITY_SIGN_METHODS:
        allowed = ", ".join(MAJORITY_SIGN_METHODS)
        raise MergeError(f"unknown majority_sign_method {majority_sign_method!r}; choose one of {allowed}")
    if svd_rank is not None and (isinstance(svd_rank, bool) or not isinstance(svd_rank, int) or svd_rank < 1):
        raise MergeError(f"svd_rank {svd_rank!r} must be a positive integer")
    if svd_clamp is not None and not (isinstance(svd_clamp, (int, float)) and 0 <= svd_clamp <= 1):
        raise MergeError(f"svd_clamp {svd_clamp!r} must be a quantile between 0 and 1")
    return effective


def _check_shapes(adapters, modules) -> None:
    for module in modules:
        shapes = {(a.lora_A[module].shape[1], a.lora_B[module].shape[0]) for a, _ in adapters if module in a.lora_A}
        if len(shapes) != 1:
            found = ", ".join(f"in={i} out={o}" for i, o in sorted(shapes))
            raise MergeError(f"module {module!r} has different shapes in the adapters ({found}); are they for the same base?")


def _alpha_for(scaling: float, r: int, use_rslora: bool) -> float | int:
    """The lora_alpha that gives `scaling` at rank r; a whole number when one reproduces it exactly."""
    norm = math.sqrt(r) if use_rslora else r
    alpha = scaling * norm
    if alpha == round(alpha) and round(alpha) / norm == scaling:
        return int(round(alpha))
    return alpha


def _most_common(values, prefer):
    """The most frequent value; `prefer` (the config's own value) wins a tie, so a round trip keeps the config."""
    counts = Counter(values)
    top = max(counts.values())
    return prefer if counts.get(prefer) == top else counts.most_common(1)[0][0]


def _module_generator(seed: int, module: str, device: torch.device) -> torch.Generator:
    import torch

    digest = hashlib.sha256(f"{seed}/{module}".encode()).digest()
    return torch.Generator(device=device).manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def _format_number(x: float) -> str:
    text = repr(float(x))
    return text[:-2] if text.endswith(".0") else text
