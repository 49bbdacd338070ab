"""Portal sign-in: a token becomes a signed session cookie; forms carry a CSRF token bound to it.

The cookie holds the token's hash (never the token), a CSRF secret and the time it was signed, signed with a key
made when the server starts (restarting the server signs everyone out). It is HttpOnly (no script reads it),
SameSite=Strict (no other site's page sends it) and Secure over HTTPS. Each request looks the hash up in the
tokens file again, so removing a token there ends its sessions at once. The sign-in form itself carries a CSRF
token from a short-lived cookie of its own (double submit), so another site cannot sign a browser in as someone.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeTimedSerializer

from registry.errors import Unauthenticated

from ..auth import Identity
from ..tokens import TokenStore

SESSION_COOKIE = "loradock_session"
SIGN_IN_COOKIE = "loradock_sign_in"
SESSION_MAX_AGE_S = 12 * 3600
SIGN_IN_MAX_AGE_S = 600


@dataclass(frozen=True)
class Session:
    """A signed-in caller: who (its token's name and roles) and the CSRF token its forms must carry."""

    identity: Identity
    csrf: str


class Sessions:
    """Signs sessions in and reads them back; with `tokens` None (auth off: localhost only) everyone is an admin."""

    def __init__(self, tokens: TokenStore | None, key: bytes | None = None):
        self.tokens = tokens
        self._signer = URLSafeTimedSerializer(key or secrets.token_bytes(32), salt="loradock-portal-session")
        self._sign_in = URLSafeTimedSerializer(key or secrets.token_bytes(32), salt="loradock-portal-sign-in")
        # With auth off every caller is the local admin; forms still carry a secret that another site's page
        # cannot read, so it cannot make a local browser post them.
        self._auth_off_csrf = secrets.token_urlsafe(24)

    @property
    def auth_on(self) -> bool:
        return self.tokens is not None

    def sign_in(self, token: str) -> str:
        """The session cookie's value for `token`; Unauthenticated (changing nothing) if no entry has its hash."""
        entry = self.tokens.identify(token.strip()) if token.strip() else None
        if entry is None:
            raise Unauthenticated("that token is not one this server accepts (see `reg token create`)")
        return self._signer.dumps({"sha256": entry.sha256, "csrf": secrets.token_urlsafe(24)})

    def read(self, cookie: str | None, peer: str) -> Session | None:
        """The session a request's cookie stands for; None when it has none, or a forged, expired or revoked one."""
        if not self.auth_on:
            return Session(Identity("", frozenset({"admin"}), peer), self._auth_off_csrf)
        try:
            data = self._signer.loads(cookie or "", max_age=SESSION_MAX_AGE_S)
        except BadSignature:
            return None
        entry = self.tokens.by_hash(data.get("sha256", ""))
        return Session(Identity(entry.name, entry.roles, peer), data["csrf"]) if entry is not None else None

    def sign_in_form(self) -> tuple[str, str]:
        """(cookie value, form field value) for one sign-in form: the POST must bring both back, matching."""
        nonce = secrets.token_urlsafe(24)
        return self._sign_in.dumps(nonce), nonce

    def check_sign_in_form(self, cookie: str | None, field: str) -> bool:
        try:
            nonce = self._sign_in.loads(cookie or "", max_age=SIGN_IN_MAX_AGE_S)
        except BadSignature:
            return False
        return hmac.compare_digest(str(nonce), field or "")

    @staticmethod
    def check_csrf(session: Session, field: str | None) -> bool:
        """A form of this session: its hidden `csrf` field is the session's own."""
        return hmac.compare_digest(session.csrf, field or "")
