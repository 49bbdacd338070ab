"""The README.md model card of an export: where the weights came from and how well they were checked.

Plain text from the export's facts (no torch): the source versions and weights, the merge method,
the base's identity and digests, each version's recorded evaluations, and the fidelity check.
"""

from __future__ import annotations

import json


def render_card(facts: dict) -> str:
    """`facts`: format, method, dtype, sources [{ref, weight, manifest_digest, peft_type, rank, alpha, targets,
    run_id, quantization, evaluations}], base {name, hub_id, source, weights_digest, architecture, num_parameters},
    fidelity (FidelityReport.to_dict()), created_at, tool_versions."""
    base, sources, fidelity = facts["base"], facts["sources"], facts["fidelity"]
    merged = facts["format"] == "merged"
    lines = [
        "---",
        *([f"base_model: {base['hub_id']}"] if base.get("hub_id") else []),
        f"library_name: {'transformers' if merged else 'peft'}",
        "tags:",
        "- loradock",
        "- lora",
        f"- {'merged' if merged else 'adapter'}",
        "---",
        "",
        f"# {_title(sources)}",
        "",
        _summary(facts),
        "",
        "## Sources",
        "",
        "| adapter version | weight | PEFT | rank | alpha | targets | manifest digest | training run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in sources:
        lines.append(
            f"| {s['ref']} | {s['weight']:g} | {s['peft_type']} | {s.get('rank') or '-'} | {_num(s.get('alpha'))} | "
            f"{', '.join(s.get('targets') or []) or '-'} | `{s['manifest_digest']}` | {s.get('run_id') or '-'} |"
        )
    lines += ["", "## Merge", ""]
    if len(sources) > 1 or sources[0]["weight"] != 1:
        lines.append(f"- method: `{facts['method']}` (PEFT's `add_weighted_adapter` combination type)")
    if merged:
        lines.append(f"- merged into a full-precision ({facts['merge_precision']}) copy of the base, "
                     f"then saved as {facts['dtype']}")
        for s in sources:
            if s.get("quantization") in ("nf4", "int8"):
                how = "with QLoRA on a 4-bit NF4" if s["quantization"] == "nf4" else "on an 8-bit (LLM.int8)"
                lines.append(f"- {s['ref']} was trained {how} quantization of the base; the base was "
                             "dequantized for the merge (its full-precision weights were loaded), "
                             "never merged into quantized weights")
    else:
        lines.append("- a plain PEFT LoRA directory: load it on the base with `PeftModel.from_pretrained`, "
                     "or serve it with vLLM / LoRAX")
    lines += [
        "",
        "## Base model",
        "",
        f"- name: {base['name']}" + (f" (hub id `{base['hub_id']}`)" if base.get("hub_id") else ""),
        f"- source: {base.get('source') or '-'}",
        f"- architecture: {base.get('architecture') or '-'}, {base.get('num_parameters', 0) / 1e6:.1f}M parameters",
        f"- weights digest: `{base['weights_digest']}`",
        "",
        "## Evaluations",
        "",
    ]
    lines += _evaluations(sources)
    lines += [
        "",
        "## Fidelity check",
        "",
        f"Logits of this export, loaded back from its files, against the base plus the unmerged adapter in {fidelity['dtype']}, "
        f"on {fidelity['probes']} probes ({fidelity['positions']} token positions) from the {fidelity['probe_source']}:",
        "",
        f"- max |logit difference|: {fidelity['max_abs_diff']:.3g} (tolerance {fidelity['tolerance']:g})",
        f"- top-1 token agreement: {fidelity['top1_agreement']:.2%} (at least {fidelity['min_top1_agreement']:.0%} required; "
        f"{fidelity['near_ties']} near-tie positions, whose best two reference logits are within {fidelity['tie_margin']:g}, "
        "not counted)",
        f"- result: {'passed' if fidelity['passed'] else 'FAILED'}",
        "",
        "## Usage",
        "",
        "```python",
        *_usage(merged, base),
        "```",
        "",
        f"Exported {facts['created_at'][:19]} UTC by loradock; "
        + ", ".join(f"{k} {v}" for k, v in facts.get("tool_versions", {}).items()) + ".",
        "",
    ]
    return "\n".join(lines)


def _title(sources: list[dict]) -> str:
    if len(sources) == 1:
        return sources[0]["ref"]
    return " + ".join(f"{s['ref']}×{s['weight']:g}" for s in sources)


def _summary(facts: dict) -> str:
    what = "merged into its base model" if facts["format"] == "merged" else "as a PEFT adapter directory"
    names = ", ".join(s["ref"] for s in facts["sources"])
    return f"{names} {what} by loradock (`reg export`)."


def _evaluations(sources: list[dict]) -> list[str]:
    lines = []
    for s in sources:
        evaluations = s.get("evaluations") or []
        if not evaluations:
            lines.append(f"- {s['ref']}: none recorded")
            continue
        for ev in evaluations:
            verdict = {True: " (passed its thresholds)", False: " (FAILED: " + "; ".join(ev.get("failures") or []) + ")"}
            lines.append(f"- {s['ref']} {ev['name']}/{ev['split']}{verdict.get(ev.get('passed'), '')}:")
            base_metrics = ev.get("base_metrics") or {}
            for key, value in (ev.get("metrics") or {}).items():
                against = f" (base {_num(base_metrics[key])})" if key in base_metrics else ""
                lines.append(f"  - {key}: {_num(value)}{against}")
    return lines


def _usage(merged: bool, base: dict) -> list[str]:
    if merged:
        return [
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            'model = AutoModelForCausalLM.from_pretrained("PATH")',
            'tokenizer = AutoTokenizer.from_pretrained("PATH")',
        ]
    return [
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM",
        f"base = AutoModelForCausalLM.from_pretrained({json.dumps(base.get('hub_id') or base['name'])})",
        'model = PeftModel.from_pretrained(base, "PATH")',
    ]


def _num(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)
