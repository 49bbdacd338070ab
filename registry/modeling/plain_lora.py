"""What makes an adapter something other than plain LoRA, "y = base(x) + B A x * scaling": the one refusal list.

The server's adapter slots, its per-request merges and `reg export` apply only that arithmetic, and all of
them read an adapter through `registry.modeling.lora.read_lora`, which asks `why_not_plain_lora`; so an
adapter refused as `adapter=` is refused through `merge=[...]` too. Reads the config only (no torch).
"""

from __future__ import annotations

# Config fields that make an adapter something other than plain LoRA, and what each one means.
REFUSED_FIELDS = {
    "use_dora": "it is a DoRA adapter (use_dora=true), whose magnitude vector rescales the base weight itself",
    "lora_bias": "it trains a bias on lora_B (lora_bias=true)",
    "modules_to_save": "it replaces whole base modules (modules_to_save={value})",
    "trainable_token_indices": "it retrains embedding rows (trainable_token_indices)",
    "target_parameters": "it targets parameters, not Linear layers (target_parameters={value})",
    "layer_replication": "it changes the base's layer stack (layer_replication)",
    "use_qalora": "it is a QA-LoRA adapter (use_qalora)",
    "use_bdlora": "it is a block-diagonal LoRA (use_bdlora)",
    "velora_config": "it is a VeLoRA adapter (velora_config)",
    "alora_invocation_tokens": "it is an activated LoRA (alora_invocation_tokens)",
    "monteclora_config": "it is a MonteCLoRA adapter (monteclora_config)",
    "arrow_config": "it is an Arrow routing adapter (arrow_config)",
    "kasa_config": "it is a KaSA adapter (kasa_config)",
}
# Initialisations that also rewrite the base weights, unless saved with PEFT's weight conversion.
BASE_REWRITING_INITS = ("pissa", "corda", "olora", "loftq", "mica")


def why_not_plain_lora(config: dict, action: str = "served") -> str | None:
    """Why an adapter with this adapter_config.json cannot be `action` ("served", "merged") as plain LoRA on
    Linear layers; None when it can."""
    peft_type = config.get("peft_type")
    if peft_type != "LORA":
        return (f"a {peft_type} adapter cannot be {action} (peft_type is {peft_type!r}); only LORA adapters can "
                "(prompt tuning, IA3 and the other methods are not plain LoRA)")
    if config.get("bias", "none") != "none":
        return (f"it trains the base layers' biases (bias={config['bias']!r}), so it cannot be {action} as plain LoRA "
                "(retrain with bias='none')")
    for field, reason in REFUSED_FIELDS.items():
        value = config.get(field)
        if value:
            return (f"{reason.format(value=value)}, so it cannot be {action} as plain LoRA "
                    "(PEFT itself can merge it into its base; or train it as plain LoRA)")
    init = config.get("init_lora_weights")
    if isinstance(init, str) and init.lower().startswith(BASE_REWRITING_INITS):
        return (f"init_lora_weights={init!r} also rewrites the base weights, so it cannot be {action} as plain LoRA; "
                "save it with PEFT's path_initial_model_for_weight_conversion to get a plain LoRA adapter")
    return None
