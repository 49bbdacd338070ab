"""`reg export` on the tiny Llama: merged exports load with plain transformers and generate what the server
(a real gRPC server, --quant none) generates; weighted merges equal the server's per-request merges; the
fidelity check catches a broken merge; every export is recorded; bad input changes nothing."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from conftest import TINY_BASE, make_adapter_dir, snapshot
from plain_transformers import plain_transformers_generate

from cli.errors import exit_code_for
from cli.main import main
from registry import Registry
from server.app import create_server, shutdown
from server.client import LoradockClient
from registry.export.exporter import ExportRequest, FidelityError, export
from registry.modeling.lora import read_lora
from registry.modeling.merge import fold_lora
from server.options import ServerOptions
from trainer.heldout import held_out_examples, held_out_probes

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ["Q: 12+30 A:", "hello world", "The quick brown fox", "What is the capital of France?"]
CHATS = ["What is 7+5?", "Say hello"]
MERGED_FILES = {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                "README.md", "loradock_export.json"}


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_base_dir, other_base_dir):
    """A registry with LoRA adapters a:1, b:1 (rank 4) and c:1 (rank 8, all linear), a deleted old:1, an IA3
    adapter, one on another base, and a real gRPC server (--quant none) on it."""
    home = tmp_path_factory.mktemp("export-home")
    work = tmp_path_factory.mktemp("export-adapters")
    reg = Registry(home)
    reg.add_base(str(tiny_base_dir), TINY_BASE)
    reg.add_base(str(other_base_dir), "tiny-wide")
    for name, kind, seed in (("a", "lora", 11), ("b", "lora", 12), ("c", "lora-all", 13), ("old", "lora", 14), ("ia", "ia3", 15)):
        reg.push(make_adapter_dir(tiny_base_dir, work / name, kind, seed), name)
    reg.push(make_adapter_dir(other_base_dir, work / "wide", "lora", 16), "wide")
    reg.remove_version("old:1")
    server, port, service = create_server(ServerOptions(base=TINY_BASE, quant="none", port=0, max_batch_size=4), reg)
    client = LoradockClient(f"127.0.0.1:{port}", timeout=120)
    yield {"reg": reg, "home": home, "client": client, "work": work, "base_dir": tiny_base_dir}
    client.close()
    shutdown(server, service, 0)
    reg.close()


def reg_export(served, *args: str) -> int:
    return main(["export", *args, "--home", str(served["home"])])


@pytest.fixture(scope="module")
def exported_a(served, tmp_path_factory):
    """a:1 exported as a merged fp32 model with the CLI."""
    out = tmp_path_factory.mktemp("exports") / "a-merged"
    assert reg_export(served, "a:1", "--out", str(out), "--dtype", "fp32") == 0
    return out


@pytest.fixture(scope="module")
def exported_ab(served, tmp_path_factory):
    """a:1*0.7 + b:1*0.3 (linear) exported as a merged fp32 model."""
    out = tmp_path_factory.mktemp("exports") / "ab-merged"
    assert reg_export(served, "--merge", "a:1=0.7", "--merge", "b:1=0.3", "--method", "linear", "--out", str(out),
                      "--dtype", "fp32") == 0
    return out


def logits(model, ids=(1, 5, 17, 42, 99, 200, 7, 300)):
    with torch.no_grad():
        return model(torch.tensor([list(ids)])).logits


def load_merged(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path).eval()


def load_peft(base_dir: Path, adapter_dir: Path):
    from peft import PeftModel

    return PeftModel.from_pretrained(load_merged(base_dir), adapter_dir).eval()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- merged exports against the server --------------------------------------------------------------------


@pytest.mark.integration
def test_export_loads_with_plain_transformers_and_generates_what_the_server_does(served, exported_a, tmp_path):
    assert MERGED_FILES | {"model.safetensors"} == {p.name for p in exported_a.iterdir()}
    plain = plain_transformers_generate(exported_a, PROMPTS, CHATS, 8, cwd=tmp_path)
    assert plain["dtype"] == "torch.float32"
    client = served["client"]
    served_texts = [client.generate(p, adapter="a:1", max_new_tokens=8).text for p in PROMPTS]
    served_chats = [client.generate(messages=[{"role": "user", "content": c}], adapter="a:1", max_new_tokens=8).text
                    for c in CHATS]
    assert plain["texts"] == served_texts
    assert plain["chats"] == served_chats  # the chat template travelled with the export
    base_texts = [client.generate(p, max_new_tokens=8).text for p in PROMPTS]
    assert base_texts != served_texts, "the adapter should change what the model says"


@pytest.mark.parametrize("merge,method,options", [
    (["a:1=0.7", "b:1=0.3"], "linear", {}),
    (["a:1=1", "c:1=-0.5"], "cat", {}),
    (["a:1=0.7", "b:1=0.3"], "ties", {"density": 0.5, "majority_sign_method": "frequency"}),
])
def test_weighted_export_equals_the_servers_merge_of_the_same_pair(served, exported_ab, tmp_path, merge, method, options):
    if method == "linear":
        out = exported_ab
    else:
        out = tmp_path / "merged"
        flags = [a for k, v in options.items() for a in (f"--{k.replace('_', '-')}", str(v))]
        assert reg_export(served, *[a for m in merge for a in ("--merge", m)], "--method", method, *flags,
                          "--out", str(out), "--dtype", "fp32") == 0
    model = load_merged(out)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    pairs = [(m.split("=")[0], float(m.split("=")[1])) for m in merge]
    for prompt in PROMPTS:
        ids = tok(prompt)["input_ids"]
        with torch.no_grad():
            generated = model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False,
                                       pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        local = tok.decode(generated[0, len(ids):], skip_special_tokens=True)
        remote = served["client"].generate(prompt, merge=pairs, merge_method=method, max_new_tokens=8,
                                           **{f"merge_{k}": v for k, v in options.items()})
        assert local == remote.text, prompt
        assert remote.adapter_version.startswith("merge(")


# --- the fidelity check -------------------------------------------------------------------------------------


def double_merge(served):
    """A real merge bug: the adapter's update folded in a second time."""
    adapter = read_lora(served["reg"].pull("a:1", served["work"] / "a-again", force=True)[1], "merge")
    return lambda model: fold_lora(model, adapter)


@pytest.mark.parametrize("existing", [False, True], ids=["new-out", "forced-over-existing-out"])
def test_the_fidelity_check_catches_a_corrupted_merge_and_writes_nothing(served, tmp_path, capsys, existing):
    reg, out = served["reg"], tmp_path / "out"
    if existing:
        out.mkdir()
        (out / "keep.txt").write_text("the previous export")
    before = len(reg.exports(reg.resolve("a:1").id))
    request = ExportRequest(sources=[("a:1", 1.0)], out=out, dtype="fp32", force=existing)
    with pytest.raises(FidelityError) as err:
        export(reg, request, tamper=double_merge(served))
    assert exit_code_for(err.value) == 1
    assert "fidelity check failed for a:1" in str(err.value) and "exceeds the fp32 tolerance" in str(err.value)
    assert f"nothing was written to {out}" in str(err.value)
    if existing:
        assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "the previous export"
    else:
        assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == (["out"] if existing else []), "no half-written sibling left"

    records = reg.exports(reg.resolve("a:1").id)
    assert len(records) == before + 1
    failed = records[-1]
    assert failed["status"] == "failed" and failed["files"] == [] and failed["out_path"] == str(out.resolve())
    assert "exceeds the fp32 tolerance" in failed["reason"] and failed["fidelity"]["passed"] is False
    assert failed["fidelity"]["top1_agreement"] < 0.99
    capsys.readouterr()
    assert main(["show", "a:1", "--home", str(served["home"])]) == 0
    assert "FAILED" in capsys.readouterr().out


def test_the_same_export_without_the_corruption_passes(served, tmp_path):
    result = export(served["reg"], ExportRequest(sources=[("a:1", 1.0)], out=tmp_path / "out", dtype="fp32"))
    fidelity = result.fidelity
    assert fidelity["passed"] and fidelity["max_abs_diff"] < 1e-4 and fidelity["top1_agreement"] == 1.0
    assert fidelity["positions"] > 100 and fidelity["probe_source"] == "built-in probe prompts"


def test_a_crash_while_writing_leaves_nothing_in_out(served, tmp_path):
    def crash(model):
        raise KeyboardInterrupt("killed mid-export")

    reg = served["reg"]
    before = snapshot(served["home"])
    with pytest.raises(KeyboardInterrupt):
        export(reg, ExportRequest(sources=[("a:1", 1.0)], out=tmp_path / "out"), tamper=crash)
    assert list(tmp_path.iterdir()) == []
    assert snapshot(served["home"]) == before


# --- records, formats, shards, dtypes ------------------------------------------------------------------------


def test_export_is_recorded_with_its_file_digests_and_listed_by_reg_show(served, exported_a, exported_ab, capsys):
    capsys.readouterr()
    assert main(["show", "a:1", "--json", "--home", str(served["home"])]) == 0
    exports = json.loads(capsys.readouterr().out)["exports"]
    (record,) = [e for e in exports if e["out_path"] == str(exported_a.resolve())]
    assert record["status"] == "passed" and record["reason"] is None
    assert record["format"] == "merged" and record["dtype"] == "fp32" and record["base_name"] == TINY_BASE
    version = served["reg"].resolve("a:1")
    assert record["sources"] == [
        {"version_id": version.id, "ref": "a:1", "weight": 1.0, "manifest_digest": version.manifest_digest}]
    on_disk = {p.name: sha256(p) for p in exported_a.iterdir()}
    assert {f["path"]: f["sha256"] for f in record["files"]} == on_disk
    assert record["fidelity"]["passed"] and record["fidelity"]["tolerance"] == 1e-2

    card = (exported_a / "README.md").read_text()
    for needle in ("a:1", version.manifest_digest, served["reg"].get_base(TINY_BASE).weights_digest, "Fidelity check",
                   "merged into a full-precision (float32) copy of the base"):
        assert needle in card, needle
    provenance = json.loads((exported_a / "loradock_export.json").read_text())
    assert provenance["sources"][0]["ref"] == "a:1" and provenance["fidelity"]["passed"]

    assert main(["show", "a:1", "--home", str(served["home"])]) == 0
    shown = capsys.readouterr().out
    assert "Exports" in shown and f"passed a:1 -> merged fp32 {exported_a.resolve()}" in shown
    assert main(["show", "b:1", "--json", "--home", str(served["home"])]) == 0  # a merge is listed under each source
    (merge,) = [e for e in json.loads(capsys.readouterr().out)["exports"] if e["out_path"] == str(exported_ab.resolve())]
    assert [(s["ref"], s["weight"]) for s in merge["sources"]] == [("a:1", 0.7), ("b:1", 0.3)] and merge["method"] == "linear"


def test_peft_format_writes_the_adapter_files_and_a_merge_as_a_peft_directory(served, exported_ab, tmp_path):
    reg, base_dir = served["reg"], served["base_dir"]
    single = tmp_path / "a-peft"
    assert reg_export(served, "a:1", "--format", "peft", "--out", str(single)) == 0
    version = reg.resolve("a:1")
    for f in version.files:
        if f.path != "README.md":  # the export's model card replaces PEFT's
            assert sha256(single / f.path) == f.sha256, f.path
    original = reg.pull("a:1", tmp_path / "a-pulled")[1]
    torch.testing.assert_close(logits(load_peft(base_dir, single)), logits(load_peft(base_dir, original)), atol=0, rtol=0)

    merged = tmp_path / "ab-peft"
    assert reg_export(served, "--merge", "a:1=0.7", "--merge", "b:1=0.3", "--method", "linear", "--format", "peft",
                      "--out", str(merged)) == 0
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= {p.name for p in merged.iterdir()}
    assert "library_name: peft" in (merged / "README.md").read_text()
    torch.testing.assert_close(logits(load_peft(base_dir, merged)), logits(load_merged(exported_ab)), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(logits(load_merged(exported_ab)), logits(load_merged(base_dir)), atol=1e-3)


def test_a_small_max_shard_size_shards_the_weights_with_an_index(served, exported_a, tmp_path):
    out = tmp_path / "sharded"
    assert reg_export(served, "a:1", "--out", str(out), "--dtype", "fp32", "--max-shard-size", "100KB") == 0
    shards = sorted(p.name for p in out.glob("model-*.safetensors"))
    assert len(shards) > 1 and not (out / "model.safetensors").exists()
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards)
    from safetensors import safe_open

    for shard in shards:
        assert (out / shard).stat().st_size <= 100_000 or len(safe_open(out / shard, "pt").keys()) == 1
    torch.testing.assert_close(logits(load_merged(out)), logits(load_merged(exported_a)), atol=0, rtol=0)


def test_bf16_export_is_saved_in_bf16_and_passes_its_check(served, exported_a, tmp_path):
    out = tmp_path / "bf16"
    assert reg_export(served, "a:1", "--out", str(out), "--dtype", "bf16", "--json") == 0
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    from safetensors import safe_open

    with safe_open(out / "model.safetensors", "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    model = load_merged(out)
    assert model.dtype == torch.bfloat16
    torch.testing.assert_close(logits(model).float(), logits(load_merged(exported_a)), atol=0.1, rtol=0)
    record = served["reg"].exports(served["reg"].resolve("a:1").id)[-1]
    assert record["dtype"] == "bf16" and record["fidelity"]["passed"] and record["fidelity"]["tolerance"] == 3.0


def test_force_replaces_a_non_empty_output_directory(served, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    assert reg_export(served, "b:1", "--out", str(out), "--force") == 0
    assert not (out / "stale.txt").exists() and (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# --- probes from held-out data, QLoRA --------------------------------------------------------------------------


def test_probes_come_from_the_held_out_split_and_the_card_notes_qlora(tiny_base_dir, home, tmp_path, capsys):
    import shutil

    import yaml

    from trainer.config import load_config
    from trainer.train import train

    data = tmp_path / "arith.jsonl"
    shutil.copy(ROOT / "examples" / "arith.jsonl", data)
    config = {
        "base_model": str(tiny_base_dir), "adapter": "qlora", "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0,
        "datasets": [{"path": str(data), "type": "alpaca"}], "val_set_size": 6, "sequence_len": 48, "micro_batch_size": 8,
        "max_steps": 2, "learning_rate": 0.002, "seed": 5, "push": {"name": "tq"},
        "evaluation": {"max_examples": 6, "max_new_tokens": 2, "max_general_ppl_ratio": None},
    }
    (tmp_path / "tq.yaml").write_text(yaml.safe_dump(config))
    result = train(load_config(tmp_path / "tq.yaml"), Registry(home), progress=False)
    reg = Registry(home)
    version = reg.resolve(result.version_ref)

    examples, description = held_out_examples(reg, version)
    assert len(examples) == 6 and description.startswith("held-out split of run ")
    samples = json.loads((result.run_dir / "metrics.json").read_text())["evaluation"]["samples"]
    assert [e.messages[-1]["content"] for e in examples] == [s["prompt"] for s in samples]  # the split the trainer held out
    probes, _ = held_out_probes(reg, [version])
    assert probes[0]["messages"][-1] == {"role": "assistant", "content": examples[0].response}

    out = tmp_path / "tq-merged"
    assert main(["export", "tq:1", "--out", str(out), "--json"]) == 0
    fidelity = json.loads(capsys.readouterr().out)["fidelity"]
    assert fidelity["passed"] and fidelity["probes"] == 6 and fidelity["probe_source"] == description
    card = (out / "README.md").read_text()
    assert "trained with QLoRA on a 4-bit NF4 quantization of the base; the base was dequantized for the merge" in card
    assert "heldout/val" in card and "exact_match" in card  # the version's recorded evaluation

    with data.open("a") as f:
        f.write('{"instruction": "What is 1 + 1?", "input": "", "output": "2"}\n')
    assert main(["export", "tq:1", "--out", str(tmp_path / "again"), "--json"]) == 0
    fidelity = json.loads(capsys.readouterr().out)["fidelity"]
    assert fidelity["probe_source"] == f"built-in probe prompts (dataset {data} changed since run {version.run_id})"


# --- bad input -------------------------------------------------------------------------------------------------


BAD_EXPORTS = [
    # id, arguments (OUT is replaced by a fresh path), exit code, what the message says
    ("unknown-adapter", ["nope:1"], 3, "no adapter named 'nope'"),
    ("unknown-version", ["a:9"], 3, "adapter 'a' has no version 9"),
    ("unknown-alias", ["a@prod"], 3, "adapter 'a' has no alias 'prod'"),
    ("deleted-version", ["old:1"], 3, "old:1 was deleted at"),
    ("deleted-in-merge", ["--merge", "a:1=0.5", "--merge", "old:1=0.5"], 3, "old:1 was deleted at"),
    ("malformed-ref", ["A:1"], 2, "invalid reference 'A:1'"),
    ("weight-not-a-number", ["--merge", "a:1=abc"], 2, "--merge 'a:1=abc': the weight 'abc' is not a number"),
    ("weight-missing", ["--merge", "a:1"], 2, "--merge 'a:1': expected REF=WEIGHT"),
    ("weight-zero", ["--merge", "a:1=0", "--merge", "b:1=1"], 2, "--merge a:1=0.0: the weight must be a non-zero finite number"),
    ("weight-nan", ["--merge", "a:1=nan"], 2, "--merge a:1=nan: the weight must be a non-zero finite number"),
    ("method", ["--merge", "a:1=0.5", "--merge", "b:1=0.5", "--method", "average"], 2,
     "--method 'average': use one of cat, linear"),
    ("method-needs-density", ["--merge", "a:1=0.5", "--merge", "b:1=0.5", "--method", "ties"], 2,
     "--method ties needs --density (0 < density <= 1"),
    ("density-range", ["--merge", "a:1=0.5", "--merge", "b:1=0.5", "--method", "ties", "--density", "1.5"], 2,
     "--density 1.5: allowed 0 < density <= 1"),
    ("sign-method", ["--merge", "a:1=0.5", "--merge", "b:1=0.5", "--method", "ties", "--density", "0.5",
                     "--majority-sign-method", "most"], 2, "--majority-sign-method 'most': use one of total, frequency"),
    ("sign-not-ties", ["--merge", "a:1=0.5", "--merge", "b:1=0.5", "--majority-sign-method", "frequency"], 2,
     "--majority-sign-method applies to ties"),
    ("linear-ranks", ["--merge", "a:1=0.5", "--merge", "c:1=0.5", "--method", "linear"], 2, "needs adapters of one rank"),
    ("dtype", ["a:1", "--dtype", "fp8"], 2, "--dtype 'fp8': use one of fp32, fp16, bf16"),
    ("format", ["a:1", "--format", "gguf"], 2, "--format 'gguf': use one of merged, peft"),
    ("peft-dtype", ["a:1", "--format", "peft", "--dtype", "bf16"], 2, "--dtype bf16 applies to --format merged"),
    ("shard-size", ["a:1", "--max-shard-size", "2XB"], 2, "--max-shard-size '2XB': expected a size such as 2GB"),
    ("ref-and-merge", ["a:1", "--merge", "b:1=1"], 2, "give either REF (a:1) or --merge REF=WEIGHT, not both"),
    ("nothing", [], 2, "nothing to export"),
    ("hub-repo-name", ["a:1", "--hub-repo", "just-a-name"], 2, "--hub-repo 'just-a-name': expected ORG/NAME"),
    ("hub-offline", ["a:1", "--hub-repo", "my-org/a-merged"], 1, "HF_HUB_OFFLINE=1"),
    ("not-lora", ["ia:1"], 2, "a IA3 adapter cannot be merged"),
    ("different-bases", ["--merge", "a:1=0.5", "--merge", "wide:1=0.5"], 5, "the adapters were trained on different bases"),
]


@pytest.mark.parametrize("args,code,needle", [c[1:] for c in BAD_EXPORTS], ids=[c[0] for c in BAD_EXPORTS])
def test_bad_exports_are_refused_and_change_nothing(served, tmp_path, capsys, args, code, needle):
    out = tmp_path / "out"
    refused(served, capsys, [*args, "--out", str(out)], code, needle)
    assert list(tmp_path.iterdir()) == []


def test_a_non_empty_output_directory_is_refused_without_force(served, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    refused(served, capsys, ["a:1", "--out", str(out)], 4, f"--out {out} exists and is not empty", "--force")
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"


def test_an_output_directory_over_the_base_or_the_home_is_refused_even_with_force(served, capsys):
    base_dir = served["base_dir"]
    refused(served, capsys, ["a:1", "--out", str(base_dir), "--force"], 4, "would replace base tiny-llama")
    refused(served, capsys, ["a:1", "--out", str(served["home"]), "--force"], 4, "would replace the registry home")
    assert (base_dir / "model.safetensors").is_file()


def refused(served, capsys, args: list[str], code: int, *needles: str) -> None:
    capsys.readouterr()
    before = snapshot(served["home"])
    assert reg_export(served, *args) == code
    err = capsys.readouterr().err.strip().splitlines()[-1]  # progress lines may come first
    assert err.startswith("error: "), err
    for needle in needles:
        assert needle in err, (needle, err)
    assert snapshot(served["home"]) == before, "a refused export changed the registry"
