"""The torch side of adapters and bases: loading a base into memory, reading a PEFT LoRA adapter's tensors,
merging adapters. Used by the trainer, the server and export.

It sits under `registry` because the import direction (cli -> {trainer, server, registry}) lets the trainer
and the server share only the registry; and the registry imports no torch at import time, so neither does
any module here: each imports torch (transformers, peft, safetensors) only when called.

    loading.py      load_base_model: the one place that picks quantization, dtype and device
    plain_lora.py   why_not_plain_lora: the one refusal list (what is not "base(x) + B A x * scaling")
    lora.py         read_lora -> LoraTensors: the one reader of a PEFT LoRA adapter's tensors
    merge.py        PEFT's weighted-adapter merges on LoraTensors, and writing one back as a PEFT directory
    errors.py       AdapterIncompatible, MergeError, ModelLoadError (their entries in the one error table)
"""
