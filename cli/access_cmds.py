"""`reg token ...` and `reg audit`: who may call a served registry or server, and what they wrote.

Tokens live in a file of hashes (`server/tokens.py`); the audit log is the registry's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from registry import Registry

from .common import Home, Json, _registry, app
from .output import console, err_console, print_json, short, table

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
