"""What every `reg` command module shares: the app, the global options and how a command opens its registry.

Command modules (`registry_cmds.py`, `base_cmds.py`, `rollout.py`, `runs.py`, `train_cmds.py`, `server_cmds.py`,
`access_cmds.py`, `export.py`) import from here and register their commands on `app`; `main.py` imports them,
so no module of the CLI imports another that imports it back.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from registry import InvalidInput, Registry
from registry.fields import flag_name
from registry.store import BLOB_STORE_ENV

from . import logs

app = typer.Typer(
    name="reg",
    help="loradock: register, train, serve and export LoRA/QLoRA adapters.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
Home = Annotated[
    Optional[Path],
    typer.Option("--home", envvar="LORADOCK_HOME", help="Registry home directory (default: $LORADOCK_HOME, else ~/.loradock)."),
]
Json = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of a table.")]


# Set by the global options (`reg --registry grpc://HOST:PORT --token T ...`) before any command runs.
_REMOTE: dict = {}


@app.callback()
def _global_options(
    registry: Annotated[Optional[str], typer.Option(
        "--registry", envvar="LORADOCK_REGISTRY", show_default=False,
        help="Use a remote registry, grpc://HOST:PORT (grpcs:// for TLS), instead of the local home.")] = None,
    token: Annotated[Optional[str], typer.Option(
        "--token", envvar="LORADOCK_TOKEN", show_default=False,
        help="Bearer token for a remote registry or server (default: $LORADOCK_TOKEN).")] = None,
    tls_ca: Annotated[Optional[Path], typer.Option(
        "--tls-ca", envvar="LORADOCK_TLS_CA", show_default=False,
        help="PEM CA certificate to verify the remote's TLS certificate (turns TLS on).")] = None,
    blob_store: Annotated[Optional[str], typer.Option(
        "--blob-store", envvar="LORADOCK_BLOB_STORE", show_default=False,
        help="Keep the local registry's blobs in S3-compatible object storage, s3://BUCKET or s3://BUCKET/PREFIX (endpoint, region "
             "and credentials as boto3 reads them: AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...). Recorded by the home "
             "on first use.")] = None,
    log_level: Annotated[str, typer.Option(
        "--log-level", envvar="LORADOCK_LOG_LEVEL",
        help=f"Least severe log records shown on stderr: {', '.join(logs.LEVELS)}.")] = "info",
    log_format: Annotated[str, typer.Option(
        "--log-format", envvar="LORADOCK_LOG_FORMAT",
        help="Log lines as plain text, or as one JSON object a line for a log collector: text, json.")] = "text",
) -> None:
    """loradock: register, train, serve and export LoRA/QLoRA adapters."""
    logs.configure(log_level.lower(), log_format.lower())
    if blob_store:  # in the environment, so every registry this process opens, and the workers it starts, use it
        os.environ[BLOB_STORE_ENV] = blob_store
    _REMOTE.clear()
    _REMOTE.update(url=registry, token=token, tls_ca=tls_ca)


def _registry(home: Optional[Path]) -> Registry:
    """The local registry at `home`, or the remote one `--registry` names (same methods, same records)."""
    if _REMOTE.get("url"):
        from registry.remote.client import RemoteRegistry

        return RemoteRegistry(_REMOTE["url"], token=_REMOTE.get("token"), tls_ca=_REMOTE.get("tls_ca"), home=home)
    return Registry(home)


def _local_registry(home: Optional[Path], command: str) -> Registry:
    """For commands that need the registry's own files (training records, evaluations): refused up front with --registry."""
    if _REMOTE.get("url"):
        raise InvalidInput(f"`{command}` works on a local registry only, not on {_REMOTE['url']}: run it on the "
                           f"registry's host (with --home), or train locally and `reg --registry ... push` the adapter")
    return Registry(home)


Target = Annotated[str, typer.Option("--target", "-t", envvar="LORADOCK_TARGET", help="Server address host:port.")]


def with_options_of(options_class):
    """Give `command` (which takes them as `**options`) one --flag per field of the dataclass `options_class`.

    The field's default, help, flag and type come from the dataclass (server/options.py, declared with
    registry.fields.documented), so a setting is defined once; the command's own parameters come first.
    """
    import dataclasses
    import inspect
    import types
    import typing

    hints = typing.get_type_hints(options_class)

    def decorate(command):
        resolved = typing.get_type_hints(command, include_extras=True)  # this module's annotations are strings
        own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=resolved[p.name])
               for p in inspect.signature(command).parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        added = []
        for f in dataclasses.fields(options_class):
            kind = hints[f.name]
            if isinstance(kind, types.UnionType):  # `str | None` -> Optional[str], which typer reads
                kind = Optional[next(arg for arg in typing.get_args(kind) if arg is not type(None))]
            option = typer.Option(flag_name(f), help=f.metadata["help"], show_default=f.default is not None)
            added.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default,
                                           annotation=Annotated[kind, option]))
        params = added + own
        command.__signature__ = inspect.Signature(params)
        command.__annotations__ = {p.name: p.annotation for p in params}
        return command

    return decorate
