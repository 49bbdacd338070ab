"""Bearer tokens: the tokens file (hashes only, never a token), roles, and `reg token create`.

```yaml
tokens:
  - name: ci-pusher
    sha256: <hex sha256 of the token>
    roles: [read, push]
```

Roles: `infer` (Generate, GenerateStream, Feedback, ServerStats), `read` (list, show, pull),
`push` (push, alias and rollout changes), `admin` (everything, including Load/UnloadAdapter, rm, gc,
verify, audit). `LORADOCK_ADMIN_TOKEN` in the server's environment adds one admin token named `admin-env`.
Imports no gRPC: the CLI's `reg token create` uses it too.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from registry.errors import Conflict, InvalidInput, NotFound
from registry.names import validate_name

ROLES = ("infer", "read", "push", "train", "worker", "admin")
ADMIN_ENV = "LORADOCK_ADMIN_TOKEN"
TOKEN_PREFIX = "ldk_"
HEADER = "# loradock tokens: sha256 hashes only, never tokens (`reg token create NAME --roles ROLES --file THIS`)\n"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class TokenEntry:
    name: str
    sha256: str
    roles: frozenset[str]

    def allows(self, role: str) -> bool:
        return "admin" in self.roles or role in self.roles


def parse_roles(text: str | list[str]) -> frozenset[str]:
    roles = [r.strip() for r in (text.split(",") if isinstance(text, str) else text)]
    roles = [r for r in roles if r]
    unknown = [r for r in roles if r not in ROLES]
    if unknown or not roles:
        raise InvalidInput(f"roles {text!r}: use one or more of {', '.join(ROLES)} (comma-separated)")
    return frozenset(roles)


def load_tokens_file(path: Path | str) -> list[TokenEntry]:
    """The entries of a tokens file; every mistake is an error naming the file and the entry."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise InvalidInput(f"--auth-tokens {path}: no such file (make one with `reg token create NAME --file {path}`)") from None
    except yaml.YAMLError as exc:
        raise InvalidInput(f"{path}: not valid YAML ({exc})") from None
    items = data.get("tokens") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise InvalidInput(f"{path}: expected a top-level `tokens:` list")
    entries, names = [], set()
    for i, item in enumerate(items):
        where = f"{path}: tokens[{i}]"
        if not isinstance(item, dict) or set(item) - {"name", "sha256", "roles"}:
            raise InvalidInput(f"{where}: expected keys name, sha256, roles (a tokens file holds hashes, never tokens)")
        name, digest = item.get("name"), str(item.get("sha256") or "")
        validate_name(str(name), "token name")
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise InvalidInput(f"{where} ({name}): sha256 must be 64 lower-case hex digits")
        if name in names:
            raise InvalidInput(f"{where}: token name {name!r} appears twice")
        names.add(name)
        entries.append(TokenEntry(name, digest, parse_roles(item.get("roles") or [])))
    return entries


class TokenStore:
    """The tokens a server accepts: a tokens file (re-read when it changes) plus `LORADOCK_ADMIN_TOKEN`."""

    def __init__(self, path: Path | str | None = None, admin_token: str | None = None):
        self.path = Path(path) if path else None
        self._admin = TokenEntry("admin-env", token_hash(admin_token), frozenset({"admin"})) if admin_token else None
        self._entries: list[TokenEntry] = load_tokens_file(self.path) if self.path else []
        self._stamp = self._file_stamp()

    @classmethod
    def from_options(cls, tokens_file: str | None) -> "TokenStore | None":
        """None when neither a tokens file nor `LORADOCK_ADMIN_TOKEN` is given (auth is off)."""
        admin = os.environ.get(ADMIN_ENV) or None
        if not tokens_file and not admin:
            return None
        return cls(tokens_file, admin)

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat() if self.path else None
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size) if st else None

    def _reload(self) -> None:
        """Pick up tokens added or removed since the last call (`reg token create` while serving)."""
        stamp = self._file_stamp()
        if stamp is not None and stamp != self._stamp:
            self._entries = load_tokens_file(self.path)
            self._stamp = stamp

    def identify(self, token: str) -> TokenEntry | None:
        """The entry whose hash matches `token`, compared in constant time against every entry."""
        return self.by_hash(token_hash(token))

    def by_hash(self, digest: str) -> TokenEntry | None:
        """The entry with this token hash (a signed portal session names its token so: revoking the token ends it)."""
        try:
            self._reload()
        except InvalidInput:
            pass  # a half-written tokens file: keep serving with the entries read last
        found = None
        for entry in [*self._entries, *([self._admin] if self._admin else [])]:
            if hmac.compare_digest(entry.sha256, digest) and found is None:
                found = entry
        return found


def _write_tokens_file(path: Path, entries: list[TokenEntry]) -> None:
    """Replace the tokens file with `entries`: mode 0600 from the first byte, fsynced, renamed into place."""
    import yaml

    rows = [{"name": e.name, "sha256": e.sha256, "roles": [r for r in ROLES if r in e.roles]} for e in entries]
    text = HEADER + yaml.safe_dump({"tokens": rows}, default_flow_style=None, sort_keys=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)  # a server re-reading the file never sees half of it
    load_tokens_file(path)  # what was written parses


def create_token(name: str, roles: str | list[str], file: Path | str) -> str:
    """Make a random token for `name`, add its hash to `file` (written 0600); return the token, which is stored nowhere."""
    validate_name(name, "token name")
    role_set = parse_roles(roles)
    path = Path(file)
    existing = load_tokens_file(path) if path.exists() else []
    if any(e.name == name for e in existing):
        raise Conflict(f"{path} already has a token named {name!r}; pick another name or remove that entry")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    _write_tokens_file(path, [*existing, TokenEntry(name, token_hash(token), role_set)])
    return token


def remove_token(name: str, file: Path | str) -> TokenEntry:
    """Remove the entry `name` from `file` (rewritten atomically, 0600); a server using the file stops accepting it."""
    path = Path(file)
    if not path.exists():
        raise NotFound(f"{path}: no tokens file (make one with `reg token create NAME --file {path}`)")
    entries = load_tokens_file(path)
    found = next((e for e in entries if e.name == name), None)
    if found is None:
        known = ", ".join(e.name for e in entries) or "none"
        raise NotFound(f"{path} has no token named {name[:80]!r} (its tokens: {known}); see `reg token ls`")
    _write_tokens_file(path, [e for e in entries if e.name != name])
    return found
