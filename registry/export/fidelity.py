"""The export's fidelity check: does the exported model compute what the base plus the unmerged adapter computes?

On a few probe texts (the source versions' held-out examples when they have them, else
`BUILTIN_PROBES`), the logits of the exported model, loaded back from the files just written, are
compared position by position with those of the full-precision base cast to the same dtype with
the adapter applied unmerged by PEFT (its weights in that dtype too). The check passes when the
largest absolute difference is under `TOLERANCES[dtype]` and the top-1 token agrees on at least
`MIN_TOP1_AGREEMENT` of the positions where the reference has a top-1 token at all.

That last clause matters in 16 bits: bf16 logits of ~16 are spaced 0.125 apart, so the reference
often has two tokens with *equal* logits (14 of 386 positions on SmolLM2-135M), and which of them
argmax returns is down to rounding. Positions whose reference top-1 leads the runner-up by no more
than `TIE_MARGINS[dtype]` (about two bf16 steps) are counted as near ties and left out of the
agreement; they are reported. Measured on SmolLM2-135M with a trained QLoRA adapter: every decisive
position agrees in fp32, fp16 and bf16, while counting the ties drops bf16 to ~97 % (as it does
between the fp32 and bf16 base alone).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

# Largest |logit difference| allowed, per export dtype. A correct fp32 merge differs from the unmerged
# adapter by summation order only (1e-4 on SmolLM2-135M); rounding merged weights to 16 bits moves
# logits further (SmolLM2-135M, 30 layers: 0.2 in fp16, 1.2-1.8 in bf16, whose 8-bit mantissa is coarse).
# A broken merge moves them by whole units and flips decisive top-1 tokens.
TOLERANCES = {"fp32": 1e-2, "fp16": 0.5, "bf16": 3.0}
TIE_MARGINS = {"fp32": 0.0, "fp16": 0.05, "bf16": 0.25}
MIN_TOP1_AGREEMENT = 0.99
MAX_PROBES = 8
MAX_PROBE_TOKENS = 128

# Used when no source version has held-out data: short chats of the kinds adapters are trained for.
BUILTIN_PROBES = [
    {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
    for q, a in [
        ("What is the capital of France?", "The capital of France is Paris."),
        ("What is 23 + 48?", "71"),
        ("Write one sentence about the sea.", "The sea glitters under the morning sun."),
        ("Translate 'good morning' into Spanish.", "Buenos dias."),
        ("Summarize: the meeting moved from Monday to Wednesday at noon.", "The meeting is now Wednesday at noon."),
        ("List three primary colors.", "Red, blue and yellow."),
        ("Shout this: we ship on Friday", "WE SHIP ON FRIDAY!"),
        ("Explain what a LoRA adapter is in one line.", "A small low-rank update trained on top of a frozen model."),
    ]
]


@dataclass
class ProbeSet:
    """Probe texts, each `{"messages": [...]}` (chat, the last turn may be the answer) or `{"text": "..."}` (raw)."""

    probes: list[dict]
    source: str


def builtin_probes(why: str = "") -> ProbeSet:
    return ProbeSet(BUILTIN_PROBES, "built-in probe prompts" + (f" ({why})" if why else ""))


@dataclass
class FidelityReport:
    dtype: str
    probe_source: str
    probes: int
    positions: int
    max_abs_diff: float
    tolerance: float
    top1_agreement: float
    """Over the positions where the reference's top-1 leads by more than `tie_margin`."""
    min_top1_agreement: float
    near_ties: int
    """Positions left out of the top-1 agreement: the reference's two best tokens are within `tie_margin`."""
    tie_margin: float
    passed: bool

    @property
    def reason(self) -> str | None:
        if self.passed:
            return None
        problems = []
        if not self.max_abs_diff <= self.tolerance:
            problems.append(f"max |logit difference| {self.max_abs_diff:.4g} exceeds the {self.dtype} "
                            f"tolerance {self.tolerance:g}")
        if self.top1_agreement < self.min_top1_agreement:
            problems.append(f"top-1 tokens agree on {self.top1_agreement:.1%} of {self.positions - self.near_ties} positions "
                            f"(at least {self.min_top1_agreement:.0%} required)")
        return "; ".join(problems)

    def to_dict(self) -> dict:
        return {**asdict(self), "reason": self.reason}


def probe_ids(tokenizer, probe: dict) -> list[int]:
    """Token ids of one probe: chat probes through the tokenizer's chat template (if it has one), cut to MAX_PROBE_TOKENS."""
    if "text" in probe:
        ids = tokenizer(probe["text"])["input_ids"]
    elif tokenizer.chat_template:
        messages = probe["messages"]
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=messages[-1]["role"] != "assistant",
                                            tokenize=True, return_dict=True)["input_ids"]
    else:
        ids = tokenizer("\n".join(m["content"] for m in probe["messages"]))["input_ids"]
    return list(ids)[:MAX_PROBE_TOKENS]


def probe_token_ids(tokenizer, probe_set: ProbeSet) -> list[list[int]]:
    ids = [probe_ids(tokenizer, p) for p in probe_set.probes[:MAX_PROBES]]
    return [i for i in ids if i]


def logits_of(model, token_ids: list[list[int]]) -> list:
    """Float32 logits on the CPU for each probe, one forward pass per probe (no padding to get wrong)."""
    import torch

    device = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for ids in token_ids:
            out.append(model(input_ids=torch.tensor([ids], device=device)).logits[0].float().cpu())
    return out


def compare_logits(reference: list, candidate: list, dtype: str, probe_source: str) -> FidelityReport:
    """Max |difference| over every position of every probe, top-1 agreement over the decisive ones."""
    max_diff, agree, decisive, positions = 0.0, 0, 0, 0
    for ref, cand in zip(reference, candidate, strict=True):
        diff = float((ref - cand).abs().max())
        max_diff = diff if diff != diff else max(max_diff, diff)  # NaN stays NaN and fails the check
        top2 = ref.topk(2, dim=-1).values
        clear = (top2[:, 0] - top2[:, 1]) > TIE_MARGINS[dtype]
        agree += int(((ref.argmax(-1) == cand.argmax(-1)) & clear).sum())
        decisive += int(clear.sum())
        positions += ref.shape[0]
    agreement = agree / decisive if decisive else 0.0
    tolerance = TOLERANCES[dtype]
    passed = decisive > 0 and max_diff <= tolerance and agreement >= MIN_TOP1_AGREEMENT
    return FidelityReport(dtype, probe_source, len(reference), positions, max_diff, tolerance, agreement,
                          MIN_TOP1_AGREEMENT, positions - decisive, TIE_MARGINS[dtype], passed)
