"""Heterogeneous multi-LoRA: many adapters (and the bare base) in one batch, one forward pass.

Every targeted Linear of the decoder layers is wrapped in a `MultiLoraLinear` that runs the
original layer (fp32/bf16, or bitsandbytes 4-/8-bit) and then adds a LoRA delta chosen per
batch row. Adapters live in numbered slots of stacked A/B tensors (vLLM's fixed slots, Punica's
gathered matmuls in plain torch); slot 0 is the bare base and is always zero. Base weights are
never merged, swapped or copied to serve a request.

    multi = MultiLoraModel(model, max_slots=16)
    multi.assign(1, load_lora_weights(adapter_dir, multi))   # registry.modeling.lora.read_lora, checked to fit
    with multi.rows([1, 0, 1]):          # row 0 and 2 use slot 1, row 1 the bare base
        model.generate(**batch)

`rows()` sets shared state on the wrapped layers: one batch at a time per model.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from registry.modeling.errors import AdapterIncompatible
from registry.modeling.lora import LoraTensors, read_lora

# More distinct adapters than this in one layer: one gathered bmm instead of a matmul pair per adapter
# (measured single-threaded on a 2-core CPU, SmolLM2 shapes: the gathered bmm wins from 2 adapters in prefill and costs
# about the same as 2-4 matmul pairs in decode).
DEFAULT_MAX_GROUPS = 1
# Decode steps keep each row position's gathered A/B between steps, so a step copies only the rows whose
# slot changed (a request joined or left) instead of every row's adapter weights in every layer (measured:
# a 16-adapter decode step that re-gathers every row costs 159 ms against 91 ms). This bounds their memory.
DEFAULT_GATHER_CACHE_BYTES = 512 * 2**20


def load_lora_weights(adapter_dir: str | Path, model: nn.Module | MultiLoraModel | None = None) -> LoraTensors:
    """Read an adapter directory for a slot (`read_lora`); with `model`, also check it fits that model.

    Anything that is not plain LoRA on Linear layers raises `AdapterIncompatible` saying what it is.
    """
    weights = read_lora(adapter_dir, "serve")
    if model is not None:
        check_fits(weights, model)
    return weights


def check_fits(weights: LoraTensors, model: nn.Module | MultiLoraModel) -> None:
    """Raise `AdapterIncompatible` unless every module of `weights` exists in `model` with matching in/out features.

    Against a `MultiLoraModel` the modules must also be ones it wrapped.
    """
    if isinstance(model, MultiLoraModel):
        shapes = {name: (layer.in_features, layer.out_features) for name, layer in model.layers.items()}
        missing_hint = f"which this server does not apply LoRA to (it wraps {_suffixes(shapes)})"
    else:
        shapes = {
            name: (module.in_features, module.out_features)
            for name, module in model.named_modules()
            if isinstance(module, (nn.Linear, MultiLoraLinear))
        }
        missing_hint = "which are not Linear layers of this base"
    missing = [name for name in weights.modules if name not in shapes]
    if missing:
        raise AdapterIncompatible(f"adapter targets {_suffixes(missing)} (e.g. {missing[0]}), {missing_hint}")
    mismatched = []
    for name in weights.modules:
        in_features, out_features = shapes[name]
        a_in, b_out = weights.lora_A[name].shape[1], weights.lora_B[name].shape[0]
        if a_in != in_features or b_out != out_features:
            mismatched.append(
                f"{name} expects in={a_in}, out={b_out} but the base layer has in={in_features}, out={out_features}"
            )
    if mismatched:
        raise AdapterIncompatible(
            f"adapter shapes do not match the base in {len(mismatched)} of {len(weights.modules)} modules, "
            f"e.g. {mismatched[0]}; it was trained for a different base model"
        )


@dataclass(frozen=True)
class RowPlan:
    """Which slot each batch row (or token) uses, grouped once per batch rather than once per layer."""

    slots: torch.Tensor
    """Long tensor on the model's device, shape (batch,) or (batch, seq) for per-token slots."""
    groups: tuple[tuple[int, torch.Tensor | None], ...]
    """Each distinct non-base slot with the flat indices of its rows (None: every row)."""
    max_groups: int
    """Above this many distinct slots in one layer, a gathered bmm replaces the per-slot matmuls."""
    keep_rows: int = 0
    """Decode steps keep each row's gathered A/B between forwards for up to this many rows (the memory budget)."""
    slot_list: tuple[int, ...] = ()
    """`slots` as Python ints (row i's slot), for comparing with what a layer already gathered."""


class MultiLoraLinear(nn.Module):
    """A base Linear plus a per-row LoRA delta read from stacked slot tensors."""

    def __init__(self, base: nn.Linear, max_slots: int, rank: int = 0):
        super().__init__()
        self.base = base
        self.in_features = base.in_features
        self.out_features = base.out_features
        device = base.weight.device
        self.register_buffer("stacked_A", torch.zeros(max_slots + 1, rank, self.in_features, device=device), persistent=False)
        self.register_buffer("stacked_B", torch.zeros(max_slots + 1, self.out_features, rank, device=device), persistent=False)
        self.slot_ranks: dict[int, int] = {}  # slots with weights for this module -> their rank here
        self.plan: RowPlan | None = None
        # Decode steps' per-row copies, by row position: A^T (rows, in, r) and B^T (rows, r, out), the slot each
        # position holds (None: nothing yet), and the plan they were last made for.
        self.row_A: torch.Tensor | None = None
        self.row_B: torch.Tensor | None = None
        self.row_slots: list[int | None] = []
        self.row_plan: RowPlan | None = None

    @property
    def rank(self) -> int:
        return self.stacked_A.shape[1]

    @property
    def gathered_nbytes(self) -> int:
        return 0 if self.row_A is None else self.row_A.nbytes + self.row_B.nbytes

    def drop_gathered(self) -> None:
        self.row_A = self.row_B = self.row_plan = None
        self.row_slots = []

    def resize(self, rank: int) -> None:
        """Re-allocate the stacks for another rank; slots keep their values (zero-padded; no slot may be cut)."""
        self.drop_gathered()
        keep = min(rank, self.rank)
        stacked_A = self.stacked_A.new_zeros(self.stacked_A.shape[0], rank, self.in_features)
        stacked_B = self.stacked_B.new_zeros(self.stacked_B.shape[0], self.out_features, rank)
        stacked_A[:, :keep] = self.stacked_A[:, :keep]
        stacked_B[:, :, :keep] = self.stacked_B[:, :, :keep]
        self.stacked_A, self.stacked_B = stacked_A, stacked_B

    def set_slot(self, slot: int, pair: tuple[torch.Tensor, torch.Tensor] | None) -> None:
        """Put (A, B) in `slot`, or zero it when `pair` is None."""
        self.drop_gathered()
        self.stacked_A[slot].zero_()
        self.stacked_B[slot].zero_()
        self.slot_ranks.pop(slot, None)
        if pair is not None:
            a, b = pair
            r = a.shape[0]
            self.stacked_A[slot, :r] = a
            self.stacked_B[slot, :, :r] = b
            self.slot_ranks[slot] = r

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        y = self.base(x, *args, **kwargs)
        plan = self.plan
        if plan is None:
            return y
        groups = [(slot, rows) for slot, rows in plan.groups if slot in self.slot_ranks]
        if not groups:
            return y
        if x.shape[: plan.slots.dim()] != plan.slots.shape:
            raise ValueError(
                f"rows() gave slots of shape {tuple(plan.slots.shape)} but this forward's input is {tuple(x.shape)}; "
                "give one slot per batch row (or per token)"
            )
        n = plan.slots.numel()
        xr = x.reshape(n, -1, self.in_features).float()  # (rows, seq, in); per-token slots: (tokens, 1, in)
        y = y.contiguous()
        yr = y.view(n, -1, self.out_features)
        # An fp32 output takes the delta in place (addmm_/baddbmm_): no delta-sized temporary, no extra add pass.
        in_place = y.dtype == torch.float32
        if len(groups) <= plan.max_groups:
            for slot, rows in groups:
                r = self.slot_ranks[slot]
                a, b = self.stacked_A[slot, :r], self.stacked_B[slot, :, :r]
                if rows is None and in_place:
                    y.view(-1, self.out_features).addmm_(F.linear(xr, a).view(-1, r), b.t())
                elif rows is None:
                    yr.add_(F.linear(F.linear(xr, a), b).to(y.dtype))
                else:
                    yr.index_add_(0, rows, F.linear(F.linear(xr.index_select(0, rows), a), b).to(y.dtype))
        else:
            a_t, b_t = self._gather(plan, groups, decode=plan.slots.dim() == 1 and xr.shape[1] == 1)
            xa = torch.bmm(xr, a_t)
            if in_place:
                yr.baddbmm_(xa, b_t)
            else:
                yr.add_(torch.bmm(xa, b_t).to(y.dtype))
        return y

    def _gather(self, plan: RowPlan, groups, decode: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's A^T (rows, in, r) and B^T (rows, r, out).

        A decode step keeps them by row position (within the plan's budget): the next step copies only the rows
        whose slot changed, so a request joining or leaving costs its own row, not every row's."""
        rows = plan.slots.numel()
        if not (decode and rows <= plan.keep_rows):
            r = max(self.slot_ranks[slot] for slot, _ in groups)
            slots = plan.slots.reshape(-1)
            return (self.stacked_A[:, :r].index_select(0, slots).transpose(1, 2),
                    self.stacked_B[:, :, :r].index_select(0, slots).transpose(1, 2))
        if self.row_plan is not plan:
            self._place(plan.slot_list, plan.keep_rows)
            self.row_plan = plan
        return self.row_A[:rows], self.row_B[:rows]

    def _place(self, slots: tuple[int, ...], max_rows: int) -> None:
        """Make row position i hold slot slots[i]'s A^T/B^T, copying only the positions that held another slot."""
        if self.row_A is None or self.row_A.shape[0] < len(slots):
            capacity = min(max(len(slots), 2 * (0 if self.row_A is None else self.row_A.shape[0])), max_rows)
            r = max(self.slot_ranks.values())
            self.row_A = self.stacked_A.new_empty(capacity, self.in_features, r)
            self.row_B = self.stacked_B.new_empty(capacity, r, self.out_features)
            self.row_slots = [None] * capacity
        changed = [i for i, slot in enumerate(slots) if self.row_slots[i] != slot]
        if not changed:
            return
        r = self.row_A.shape[2]
        positions = torch.tensor(changed, device=self.row_A.device)
        sources = torch.tensor([slots[i] for i in changed], device=self.row_A.device)
        self.row_A[positions] = self.stacked_A[:, :r].index_select(0, sources).transpose(1, 2)
        self.row_B[positions] = self.stacked_B[:, :, :r].index_select(0, sources).transpose(1, 2)
        for i in changed:
            self.row_slots[i] = slots[i]


class MultiLoraModel:
    """Wraps a causal LM's decoder Linear layers in place so each batch row can use its own adapter slot."""

    def __init__(
        self, model: nn.Module, max_slots: int, target_modules: Iterable[str] | None = None,
        max_groups: int = DEFAULT_MAX_GROUPS, rank: int = 0, gather_cache_bytes: int = DEFAULT_GATHER_CACHE_BYTES,
    ):
        """`target_modules`: last name components to wrap (q_proj, ...); None wraps every Linear in the
        decoder layers (lm_head and embeddings are never wrapped). `rank` pre-allocates slot storage for
        that rank (a larger adapter grows it). `gather_cache_bytes` bounds the per-row A/B copies kept
        between decode steps (0: none are kept)."""
        if max_slots < 1:
            raise ValueError(f"max_slots must be at least 1, got {max_slots}")
        if any(isinstance(m, MultiLoraLinear) for m in model.modules()):
            raise ValueError("this model is already wrapped by a MultiLoraModel")
        self.model = model
        self.max_slots = max_slots
        self.max_groups = max_groups
        self.gather_cache_bytes = gather_cache_bytes
        self.min_rank = rank  # the stacks never shrink below the startup rank
        self.layers: dict[str, MultiLoraLinear] = {}
        self._slot_ranks: dict[int, int] = {}
        self._slot_versions: dict[int, int] = {}  # bumped by every assign/clear of the slot
        self._last_plan: tuple[tuple[tuple[int, ...], tuple[int, ...]], RowPlan] | None = None
        targets = set(target_modules) if target_modules is not None else None
        stack_name = _decoder_stack_name(model)
        stack = model.get_submodule(stack_name)
        linears = [
            (f"{stack_name}.{name}", module) for name, module in stack.named_modules()
            if isinstance(module, nn.Linear) and (targets is None or name.rsplit(".", 1)[-1] in targets)
        ]
        if not linears:
            raise ValueError(f"no Linear layers named {sorted(targets or [])} in {stack_name}")
        for name, module in linears:
            parent_name, _, child = name.rpartition(".")
            wrapper = MultiLoraLinear(module, max_slots, rank)
            setattr(model.get_submodule(parent_name), child, wrapper)
            self.layers[name] = wrapper
        self._device = next(iter(self.layers.values())).stacked_A.device
        self._slot_bytes_per_rank = sum((layer.in_features + layer.out_features) * layer.stacked_A.element_size()
                                        for layer in self.layers.values())

    @property
    def max_rank(self) -> int:
        """The rank every slot's storage is padded to (the largest assigned so far)."""
        return next(iter(self.layers.values())).rank

    @property
    def nbytes_per_slot(self) -> int:
        """Bytes of one slot's A and B in every layer, at the current rank (read per new batch plan: no walk of the layers)."""
        return self._slot_bytes_per_rank * self.max_rank

    @property
    def nbytes(self) -> int:
        """Bytes of all slot storage, slot 0 included."""
        return self.nbytes_per_slot * (self.max_slots + 1)

    @property
    def gathered_nbytes(self) -> int:
        """Bytes of per-row A/B copies currently kept between decode steps."""
        return sum(layer.gathered_nbytes for layer in self.layers.values())

    @property
    def assigned(self) -> dict[int, int]:
        """Occupied slots -> the rank of the adapter in them."""
        return dict(self._slot_ranks)

    def slot_version(self, slot: int) -> int:
        """Changes whenever `slot` gets other weights (or none): what its rows compute is the same while it holds."""
        return self._slot_versions.get(slot, 0)

    def assign(self, slot: int, weights: LoraTensors) -> None:
        """Place `weights` in `slot` (1..max_slots), replacing whatever was there; raises before changing anything."""
        self._check_slot(slot)
        check_fits(weights, self)
        self._last_plan = None
        # Outside inference mode: stacks first allocated inside it could never be written again outside it.
        with torch.inference_mode(False), torch.no_grad():
            if weights.rank > self.max_rank:
                for layer in self.layers.values():
                    layer.resize(weights.rank)
            for name, layer in self.layers.items():
                layer.set_slot(slot, weights.slot_pair(name) if name in weights.lora_A else None)
        self._slot_ranks[slot] = weights.rank
        self._slot_versions[slot] = self.slot_version(slot) + 1

    def clear(self, slot: int) -> None:
        """Empty `slot`: rows that still name it get the bare base."""
        self._check_slot(slot)
        self._last_plan = None
        with torch.inference_mode(False), torch.no_grad():
            for layer in self.layers.values():
                layer.set_slot(slot, None)
        self._slot_ranks.pop(slot, None)
        self._slot_versions[slot] = self.slot_version(slot) + 1

    def shrink_to_fit(self) -> None:
        """Re-allocate the stacks for the largest rank still assigned (never below the startup rank)."""
        needed = max([self.min_rank, *self._slot_ranks.values()])
        if needed < self.max_rank:
            self._last_plan = None
            with torch.inference_mode(False), torch.no_grad():
                for layer in self.layers.values():
                    layer.resize(needed)

    def plan(self, row_slots: torch.Tensor | Iterable[int]) -> RowPlan:
        """Group `row_slots` (one per batch row, or a (batch, seq) tensor of per-token slots) by slot.

        The same slots as the previous call (and no assign/clear since) give the same plan object, so
        layers can keep what they gathered for it."""
        slots = torch.as_tensor(row_slots if isinstance(row_slots, torch.Tensor) else list(row_slots), dtype=torch.long)
        if slots.dim() not in (1, 2) or slots.numel() == 0:
            raise ValueError(f"row slots must be a non-empty (batch,) or (batch, seq) sequence, got shape {tuple(slots.shape)}")
        flat_slots = slots.reshape(-1).tolist()
        key = (tuple(slots.shape), tuple(flat_slots))
        if self._last_plan is not None and self._last_plan[0] == key:
            return self._last_plan[1]
        plan = self._new_plan(slots, flat_slots)
        self._last_plan = (key, plan)
        return plan

    def _new_plan(self, slots: torch.Tensor, flat_slots: list[int]) -> RowPlan:
        distinct = sorted(set(flat_slots))
        if distinct[0] < 0 or distinct[-1] > self.max_slots:
            raise ValueError(f"row slots must be in 0..{self.max_slots}, got {distinct}")
        flat = slots.reshape(-1)
        nonzero = [s for s in distinct if s != 0]
        if distinct == nonzero and len(nonzero) == 1:
            groups = ((nonzero[0], None),)
        else:
            groups = tuple((s, torch.nonzero(flat == s).reshape(-1).to(self._device)) for s in nonzero)
        keep_rows = self.gather_cache_bytes // max(1, self.nbytes_per_slot)
        return RowPlan(slots.to(self._device), groups, self.max_groups, keep_rows, tuple(flat_slots))

    def rows(self, row_slots: torch.Tensor | Iterable[int]) -> AbstractContextManager[RowPlan]:
        """Within the `with` block, row i of every forward uses slot row_slots[i] (0 = the bare base).

        Raises here, not at `with`, for slots out of range."""
        return self._planned(self.plan(row_slots))

    @contextmanager
    def _planned(self, plan: RowPlan) -> Iterator[RowPlan]:
        previous = next(iter(self.layers.values())).plan
        self._set_plan(plan)
        try:
            yield plan
        finally:
            self._set_plan(previous)

    def _set_plan(self, plan: RowPlan | None) -> None:
        for layer in self.layers.values():
            layer.plan = plan

    def _check_slot(self, slot: int) -> None:
        if not 1 <= slot <= self.max_slots:
            raise ValueError(f"slot must be in 1..{self.max_slots} (0 is the bare base), got {slot}")


def _decoder_stack_name(model: nn.Module) -> str:
    """The ModuleList of decoder layers: `model.layers` for Llama-likes, else the first `layers`/`h` list."""
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and name.rsplit(".", 1)[-1] in ("layers", "h"):
            return name
    raise ValueError(f"cannot find the decoder layers of {type(model).__name__} (no ModuleList named layers or h)")


def _suffixes(names: Iterable[str]) -> str:
    return ", ".join(sorted({name.rsplit(".", 1)[-1] for name in names}))
