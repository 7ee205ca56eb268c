"""Sign-in with an API key (checked by a service's GET /auth/whoami), CSRF, roles.

The key itself is the session: kept in an HttpOnly, SameSite=Strict cookie (Secure unless
CONSOLE_COOKIE_SECURE=false for plain-http local development), re-checked with whoami at
most every CONSOLE_WHOAMI_CACHE seconds, so a revoked key stops working within that time.
CSRF tokens are an HMAC of the session (or, before sign-in, of a random pre-session
cookie) under CONSOLE_SESSION_KEY: a form posted from elsewhere cannot carry one.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from fastapi import Request, Response

from fusion_prime.console.clients import ServiceClients
from fusion_prime.console.settings import ConsoleSettings

SESSION_COOKIE = "fp_console_session"
PRESESSION_COOKIE = "fp_console_pre"
CSRF_FIELD = "csrf_token"
ROLES = ("viewer", "operator", "compliance_officer", "risk_manager", "admin")
# what each console action needs (admin may do everything)
ACTION_ROLES = {"replay": frozenset({"operator", "admin"})}


@dataclass(frozen=True)
class User:
    key_id: str
    name: str
    role: str

    def may(self, action: str) -> bool:
        return self.role in ACTION_ROLES[action]


class SignInError(Exception):
    pass


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


class Sessions:
    def __init__(self, settings: ConsoleSettings, clients: ServiceClients) -> None:
        self.settings = settings
        self.clients = clients
        self._secret = settings.session_key.get_secret_value().encode()
        self._cache: dict[str, tuple[float, User]] = {}

    async def verify(self, key: str) -> User:
        """The key's identity from whoami (cached briefly); SignInError says why not."""
        digest = _digest(key)
        cached = self._cache.get(digest)
        now = time.monotonic()
        if cached is not None and now - cached[0] < self.settings.whoami_cache_seconds:
            return cached[1]
        service = self.settings.auth_service
        answer = await self.clients.whoami(service, key)
        if answer.status in (401, 403):
            self._cache.pop(digest, None)
            raise SignInError("this API key was not accepted")
        if answer.missing:
            raise SignInError(f"{service} has no GET /auth/whoami (is API-key auth deployed?)")
        if not answer.ok or not isinstance(answer.data, dict):
            raise SignInError(f"could not check the key: {answer.error}")
        d = answer.data
        role = str(d.get("role", ""))
        if role not in ROLES:
            raise SignInError(f"{service} answered an unknown role {role[:40]!r}")
        user = User(str(d.get("key_id", "")), str(d.get("name", "")), role)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[digest] = (now, user)
        return user

    async def current(self, request: Request) -> User | None:
        key = request.cookies.get(SESSION_COOKIE)
        if not key:
            return None
        try:
            return await self.verify(key)
        except SignInError:
            return None

    def forget(self, key: str | None) -> None:
        if key:
            self._cache.pop(_digest(key), None)

    # -- cookies ------------------------------------------------------------------------
    def _set(self, response: Response, name: str, value: str, max_age: int) -> None:
        response.set_cookie(
            name,
            value,
            max_age=max_age,
            httponly=True,
            secure=self.settings.cookie_secure,
            samesite="strict",
            path="/",
        )

    def sign_in(self, response: Response, key: str) -> None:
        self._set(response, SESSION_COOKIE, key, 8 * 3600)
        response.delete_cookie(PRESESSION_COOKIE, path="/")

    def sign_out(self, response: Response) -> None:
        response.delete_cookie(SESSION_COOKIE, path="/")

    def binding(self, request: Request, response: Response) -> str:
        """What this browser's CSRF token is bound to: the session, or before sign-in a
        random pre-session value (set as a cookie on `response`)."""
        session = request.cookies.get(SESSION_COOKIE)
        if session:
            return session
        value = request.cookies.get(PRESESSION_COOKIE) or secrets.token_urlsafe(32)
        self._set(response, PRESESSION_COOKIE, value, 3600)
        return value

    # -- CSRF ---------------------------------------------------------------------------
    def csrf_token(self, binding: str) -> str:
        return hmac.new(self._secret, b"csrf:" + _digest(binding).encode(), "sha256").hexdigest()

    def csrf_ok(self, request: Request, token: str | None) -> bool:
        binding = request.cookies.get(SESSION_COOKIE) or request.cookies.get(PRESESSION_COOKIE)
        if not binding or not token:
            return False
        return hmac.compare_digest(self.csrf_token(binding), token)
