"""`reg push/pull/ls/show/diff/rm/gc/verify` and `reg alias ...`: a registry's versions, aliases and upkeep.

The work happens in `registry/` (local) or over `--registry grpc://...` (remote): the same methods either way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from registry import parse_ref

from .common import Home, Json, _registry, app
from .output import console, err_console, human_size, print_json, table

alias_app = typer.Typer(help="Movable labels (prod, staging, ...) on adapter versions, with history.", no_args_is_help=True)
app.add_typer(alias_app, name="alias")


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
