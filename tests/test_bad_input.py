"""Bad input gets a one-line error naming the problem and the value, a non-zero exit, and changes nothing."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from conftest import TINY_BASE, snapshot
from safetensors.numpy import load_file, save_file

from cli.main import main


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_refused(capsys, home, args, expected_code: int, *needles: str) -> str:
    capsys.readouterr()  # drop output of the fixtures
    before = snapshot(home)
    code, out, err = run_cli(capsys, *args)
    assert code == expected_code, (code, out, err)
    message = err.strip()
    assert message.startswith("error: ") and "\n" not in message, message
    for needle in needles:
        assert needle in message, (needle, message)
    assert snapshot(home) == before, "a refused command changed the registry"
    return message


@pytest.fixture
def pushed(registry, make_adapter, home):
    """A registry holding demo:1 (lora) and alias demo@prod -> 1."""
    registry.push(make_adapter("lora"), "demo", alias="prod")
    return registry


@pytest.mark.parametrize(
    "name", ["team/support", "..", "a..b", "Support", "my adapter", "x" * 65, "-lead", ".hidden", ""]
)
def test_bad_adapter_names_are_refused(capsys, registry, home, make_adapter, name):
    src = make_adapter("lora")
    assert_refused(capsys, home, ["push", str(src), "--name", name], 2, "invalid adapter name", repr(name))


def test_sixty_four_characters_is_the_longest_name(registry, make_adapter):
    assert registry.push(make_adapter("lora"), "x" * 64).created


@pytest.mark.parametrize(
    "ref, needle",
    [("nope", "no adapter named 'nope'"), ("demo:7", "has no version 7"), ("demo@canary", "has no alias 'canary'"),
     ("nope:1", "no adapter named 'nope'")],
)
@pytest.mark.parametrize("command", ["pull", "show"])
def test_missing_refs_are_not_found(capsys, pushed, home, tmp_path, ref, needle, command):
    args = [command, ref] + (["--out", str(tmp_path / "out")] if command == "pull" else [])
    assert_refused(capsys, home, args, 3, needle)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("ref", ["demo:0", "demo:x", "demo:1:2", "demo@", "Demo:1", "demo@Prod", "a/b:1"])
def test_malformed_refs_are_invalid(capsys, pushed, home, ref):
    assert_refused(capsys, home, ["show", ref], 2, repr(ref))


def test_a_directory_that_is_not_an_adapter(capsys, registry, home, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_refused(capsys, home, ["push", str(empty), "--name", "demo"], 2, "not a PEFT adapter directory", str(empty))
    assert_refused(capsys, home, ["push", str(tmp_path / "missing"), "--name", "demo"], 2, "not a directory")
    (empty / "adapter_config.json").write_text("{not json")
    assert_refused(capsys, home, ["push", str(empty), "--name", "demo"], 2, "not valid JSON")
    (empty / "adapter_config.json").write_text(json.dumps({"r": 8}))
    assert_refused(capsys, home, ["push", str(empty), "--name", "demo"], 2, "no peft_type")


def test_pickled_weights_are_refused(capsys, registry, home, make_adapter):
    src = make_adapter("lora")
    (src / "adapter_model.safetensors").rename(src / "adapter_model.bin")
    assert_refused(capsys, home, ["push", str(src), "--name", "demo"], 2, "adapter_model.bin", "only safetensors")


def test_truncated_safetensors_is_refused(capsys, registry, home, make_adapter):
    src = make_adapter("lora")
    weights = src / "adapter_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 100])
    assert_refused(capsys, home, ["push", str(src), "--name", "demo"], 2, "truncated", str(weights))


@pytest.mark.parametrize("garbage", [b"", b"\x01\x02", struct.pack("<Q", 40) + b"{this is not json at all}!!!!!!!!!!!!!!!!"])
def test_corrupt_safetensors_is_refused(capsys, registry, home, make_adapter, garbage):
    src = make_adapter("lora")
    (src / "adapter_model.safetensors").write_bytes(garbage)
    assert_refused(capsys, home, ["push", str(src), "--name", "demo"], 2, "adapter_model.safetensors")


def test_tensors_that_do_not_fit_the_base_are_refused(capsys, registry, home, make_adapter, other_base_dir, tiny_base_dir):
    wide = make_adapter("lora", base_dir=other_base_dir)  # hidden 128 against the registered hidden-64 base
    config = json.loads((wide / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tiny_base_dir)  # a config that lies about its base: shapes still catch it
    (wide / "adapter_config.json").write_text(json.dumps(config))
    assert_refused(capsys, home, ["push", str(wide), "--name", "demo", "--base", TINY_BASE], 5, "has shape", TINY_BASE)


def test_tensor_names_that_do_not_fit_the_base_are_refused(capsys, registry, home, make_adapter):
    src = make_adapter("lora")
    weights = src / "adapter_model.safetensors"
    tensors = load_file(weights)
    renamed = {k.replace("self_attn.q_proj", "cross_attn.q_proj"): v for k, v in tensors.items()}
    save_file(renamed, weights)
    assert_refused(capsys, home, ["push", str(src), "--name", "demo"], 5, "cross_attn.q_proj", "names no module")


def test_adapter_config_naming_another_base_than_flag(capsys, registry, home, make_adapter, other_base_dir):
    registry.add_base(str(other_base_dir), "tiny-wide")
    src = make_adapter("lora")  # its adapter_config says the tiny-llama directory
    assert_refused(capsys, home, ["push", str(src), "--name", "demo", "--base", "tiny-wide"], 5,
                   "base_model_name_or_path", "tiny-wide")


def test_unregistered_base_is_refused(capsys, registry, home, make_adapter):
    src = make_adapter("lora")
    assert_refused(capsys, home, ["push", str(src), "--name", "demo", "--base", "no-such-base"], 3, "no-such-base")
    config = json.loads((src / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "someorg/unknown-model"
    (src / "adapter_config.json").write_text(json.dumps(config))
    assert_refused(capsys, home, ["push", str(src), "--name", "demo"], 3, "someorg/unknown-model", "not registered")


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_non_finite_weights_are_refused(capsys, registry, home, make_adapter, bad_value, dtype):
    src = make_adapter("lora")
    weights = src / "adapter_model.safetensors"
    tensors = {k: v.astype(dtype) for k, v in load_file(weights).items()}
    victim = sorted(tensors)[1]
    tensors[victim].reshape(-1)[3] = bad_value
    save_file(tensors, weights)
    assert_refused(capsys, home, ["push", str(src), "--name", "demo"], 2, "NaN or Inf", victim)


def test_bfloat16_nan_is_found_without_torch(registry, make_adapter):
    """bf16 has no numpy dtype; the scan reads exponent bits, so check it against torch's own bf16."""
    import torch
    from safetensors.torch import load_file as load_torch, save_file as save_torch

    from registry import InvalidAdapter

    src = make_adapter("lora")
    weights = src / "adapter_model.safetensors"
    tensors = {k: v.to(torch.bfloat16) for k, v in load_torch(weights).items()}
    save_torch(tensors, weights)
    assert registry.push(src, "bf16").created  # finite bf16 passes
    name = sorted(tensors)[0]
    tensors[name].view(-1)[0] = float("nan")
    save_torch(tensors, weights)
    with pytest.raises(InvalidAdapter, match="NaN or Inf"):
        registry.push(src, "bf16")


def test_bad_alias_and_version_for_alias_set(capsys, pushed, home):
    assert_refused(capsys, home, ["alias", "set", "demo@prod", "9"], 3, "has no version 9")
    assert_refused(capsys, home, ["alias", "set", "demo@Prod", "1"], 2, "'demo@Prod'")
    assert_refused(capsys, home, ["alias", "rm", "demo@nope"], 3, "has no alias 'nope'")
    assert_refused(capsys, home, ["alias", "set", "nope@prod", "1"], 3, "no adapter named 'nope'")


def test_bad_alias_on_push_writes_nothing(capsys, registry, home, make_adapter):
    assert_refused(capsys, home, ["push", str(make_adapter("lora")), "--name", "demo", "--alias", "Bad Alias"], 2, "invalid alias")


def test_rm_refuses_an_aliased_version_and_bare_names(capsys, pushed, home):
    assert_refused(capsys, home, ["rm", "demo:1"], 4, "prod", "--force")
    assert_refused(capsys, home, ["rm", "demo"], 2, "NAME:N")
    assert_refused(capsys, home, ["rm", "demo:5"], 3, "has no version 5")


def test_base_add_refuses_a_non_model(capsys, registry, home, tmp_path):
    junk = tmp_path / "junk"
    junk.mkdir()
    assert_refused(capsys, home, ["base", "add", str(junk), "--name", "junk"], 3, "no config.json", str(junk))
    assert_refused(capsys, home, ["base", "add", str(junk), "--name", "Junk"], 2, "invalid base name")
