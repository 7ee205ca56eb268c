"""Who is calling: API keys (hashed, per service database), roles, and the route rules.

A key looks like `fpk_<key id>_<secret>`. Only the key id (the lookup id, 12 hex digits)
is ever stored in clear, logged or shown after creation; the secret is kept as an scrypt
hash. Every service keeps its own `api_keys` table in its own database (no shared auth
database: a service stays usable when another one's database is down, as DESIGN.md wants
for all data); `fusion-prime auth create-key` writes the same key into each service
database it is given, so one key can work everywhere.

Every route declares one rule: `dependencies=requires("operator")` (a role), or
`signed_by(...)` for a provider callback that authenticates itself with a signature;
`/health/*` and `/metrics` are the only open paths. The route-table test and the
`fusion-prime audit` rule fail a route without one.

Verifying scrypt costs tens of milliseconds, so verified keys are cached in the process:
the key's row (revocation, expiry, role) is re-read at most every `FP_AUTH_CACHE_SECONDS`
(default 10 s), which is the bounded delay after which a revoked key stops working.
Expiry is checked on every request against the cached expiry time, without delay.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import math
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import Counter
from sqlalchemy import text

from fusion_prime.platform.errors import DomainError
from fusion_prime.platform.observability import get_logger

if TYPE_CHECKING:
    from fastapi import FastAPI
    from fastapi.dependencies.models import Dependant
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

log = get_logger(__name__)

Role = Literal["viewer", "operator", "compliance_officer", "risk_manager", "admin"]
ROLES: tuple[Role, ...] = ("viewer", "operator", "compliance_officer", "risk_manager", "admin")
KEY_PREFIX = "fpk"
KEY_ID_RE = re.compile(r"^[0-9a-f]{12}$")
OPEN_PATHS = frozenset({"/health/live", "/health/ready", "/metrics"})
TABLE = "api_keys"
# scrypt cost: n=2**14, r=8 (16 MiB, ~50 ms here); kept in each hash so it can be raised
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
CACHE_MAX_ENTRIES = 10_000

AUTH_REFUSALS = Counter(
    "fp_auth_refusals_total", "Requests refused by authentication or role", ["service", "reason"]
)


# -- errors -------------------------------------------------------------------------


class AuthenticationError(DomainError):
    """401: no usable credentials. The handler adds the WWW-Authenticate challenge."""

    status = 401
    title = "Unauthorized"

    def __init__(self, detail: str, *, reason: str, error: str | None = "invalid_token") -> None:
        super().__init__(detail)
        self.reason = reason
        challenge = 'Bearer realm="fusion-prime"'
        if error is not None:
            challenge += f', error="{error}"'
        self.headers = {"WWW-Authenticate": challenge}


class ForbiddenError(DomainError):
    status = 403
    title = "Forbidden"


class RateLimitedError(DomainError):
    status = 429
    title = "Too many requests"

    def __init__(self, detail: str, retry_after: float) -> None:
        super().__init__(detail, retry_after=math.ceil(retry_after))
        self.headers = {"Retry-After": str(math.ceil(retry_after))}


class TokenBuckets:
    """Per-key token buckets of this process: `rate` tokens/s refill, `burst` at most.

    In the process only (docs/auth.md): with N instances a key may do N x rate; enough
    to stop a runaway client or script, not a distributed quota. The least recently used
    buckets are dropped beyond `max_keys` (a dropped bucket starts full again).
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 100_000,
    ) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.clock = clock
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, key: str, *, spend: bool = True) -> float | None:
        """Spend a token (or only look): None when there is one, else the seconds until
        the next token."""
        now = self.clock()
        tokens, at = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens < 1:
            self._buckets[key] = (tokens, now)
            return (1 - tokens) / self.rate
        self._buckets[key] = (tokens - 1 if spend else tokens, now)
        self._buckets.move_to_end(key)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return None


# -- keys ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    """An authenticated caller. `actor` is what state changes record as who did them."""

    key_id: str
    name: str
    role: Role
    kind: Literal["api_key", "oidc"] = "api_key"
    expires_at: datetime | None = None

    def may(self, role: Role) -> bool:
        return self.role == "admin" or role == "viewer" or role == self.role

    @property
    def actor(self) -> str:
        return f"{self.name} [{self.key_id}]"

    def public(self) -> dict[str, str]:
        return {"key_id": self.key_id, "name": self.name, "role": self.role}


@dataclass(frozen=True)
class KeyRecord:
    key_id: str
    name: str
    role: Role
    secret_hash: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    created_by: str | None = None

    def identity(self) -> Identity:
        return Identity(self.key_id, self.name, self.role, expires_at=self.expires_at)


@dataclass(frozen=True)
class NewKey:
    """A generated key: `token` is shown once and never stored."""

    token: str
    key_id: str
    secret_hash: str


def hash_secret(secret: str, *, n: int = SCRYPT_N) -> str:
    """scrypt with a random salt; the cost is stored in the hash (the test harness makes
    its throw-away keys with a lower `n`, verified by the same code)."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(
        secret.encode(), salt=salt, n=n, r=SCRYPT_R, p=SCRYPT_P, maxmem=64 * 2**20
    )
    b64 = base64.b64encode
    return f"scrypt${n}${SCRYPT_R}${SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


def verify_secret(secret: str, stored: str) -> bool:
    try:
        algo, n, r, p, salt, digest = stored.split("$")
        if algo != "scrypt":
            return False
        expected = base64.b64decode(digest)
        got = hashlib.scrypt(
            secret.encode(),
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            maxmem=64 * 2**20,
            dklen=len(expected),
        )
    except ValueError:
        return False
    return hmac.compare_digest(got, expected)


def new_key(*, n: int = SCRYPT_N) -> NewKey:
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    return NewKey(f"{KEY_PREFIX}_{key_id}_{secret}", key_id, hash_secret(secret, n=n))


def key_from_token(token: str) -> NewKey:
    """The stored form of an existing key (a fresh salt): how the local admin key from
    <data dir>/admin.key is written into a service database that does not have it yet."""
    parsed = parse_token(token)
    if parsed is None:
        raise ValueError("not an API key (fpk_<key id>_<secret>)")
    return NewKey(token, parsed[0], hash_secret(parsed[1]))


def parse_token(token: str) -> tuple[str, str] | None:
    """(key id, secret) of a well-formed key, else None."""
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX or not KEY_ID_RE.match(parts[1]):
        return None
    if not 20 <= len(parts[2]) <= 200:
        return None
    return parts[1], parts[2]


# -- the api_keys table (every service database has one) ----------------------------

_COLUMNS = "key_id, name, role, secret_hash, created_at, expires_at, revoked_at, created_by"


def _record(row: Any) -> KeyRecord:
    return KeyRecord(*row)


async def insert_key(
    conn: AsyncConnection,
    key: NewKey,
    *,
    name: str,
    role: Role,
    expires_at: datetime | None = None,
    created_by: str | None = None,
) -> bool:
    """Store a key (its hash); False when that key id is already there (kept as it is)."""
    result = await conn.execute(
        text(
            f"INSERT INTO {TABLE} (key_id, name, role, secret_hash, expires_at, created_by) "
            "VALUES (:k, :n, :r, :h, :e, :b) ON CONFLICT (key_id) DO NOTHING"
        ),
        {
            "k": key.key_id,
            "n": name,
            "r": role,
            "h": key.secret_hash,
            "e": expires_at,
            "b": created_by,
        },
    )
    return bool(result.rowcount)


async def load_key(conn: AsyncConnection, key_id: str) -> KeyRecord | None:
    row = (
        await conn.execute(text(f"SELECT {_COLUMNS} FROM {TABLE} WHERE key_id = :k"), {"k": key_id})
    ).one_or_none()
    return None if row is None else _record(row)


async def list_keys(conn: AsyncConnection) -> list[KeyRecord]:
    rows = (await conn.execute(text(f"SELECT {_COLUMNS} FROM {TABLE} ORDER BY created_at"))).all()
    return [_record(r) for r in rows]


async def revoke_key(conn: AsyncConnection, key_id: str) -> bool:
    """Mark a key revoked (kept for the record); False when unknown or already revoked."""
    result = await conn.execute(
        text(f"UPDATE {TABLE} SET revoked_at = now() WHERE key_id = :k AND revoked_at IS NULL"),
        {"k": key_id},
    )
    return bool(result.rowcount)


def check_record(record: KeyRecord | None, now: datetime) -> Identity:
    """The identity of a key whose secret matched, or the 401 that says why not."""
    if record is None:
        raise AuthenticationError("unknown or wrong API key", reason="invalid")
    if record.revoked_at is not None:
        raise AuthenticationError(f"API key {record.key_id} is revoked", reason="revoked")
    if record.expires_at is not None and record.expires_at <= now:
        raise AuthenticationError(f"API key {record.key_id} has expired", reason="expired")
    return record.identity()


async def verify_token(conn: AsyncConnection, token: str) -> Identity:
    """Check a key against one database, without a cache (command-line tools)."""
    parsed = parse_token(token)
    if parsed is None:
        raise AuthenticationError("malformed API key", reason="malformed")
    record = await load_key(conn, parsed[0])
    if record is None or not await asyncio.to_thread(verify_secret, parsed[1], record.secret_hash):
        raise AuthenticationError("unknown or wrong API key", reason="invalid")
    return check_record(record, datetime.now(UTC))


# -- the per-process authenticator and its cache -------------------------------------


@dataclass
class _Cached:
    record: KeyRecord
    checked_at: float


class Authenticator:
    """Verifies keys against the service's own database, with a bounded cache.

    Cache entries are keyed by an HMAC of the whole token under a per-process random key,
    so the cache holds no token. A hit within `ttl` seconds costs a dict lookup; after
    that the row is read again (revocation, role, expiry changes) and scrypt is skipped
    when the stored hash is still the one this token matched.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        service: str,
        ttl: float,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        max_entries: int = CACHE_MAX_ENTRIES,
        rate: float = 50.0,
        burst: int = 200,
        oidc: OidcCallers | None = None,
    ) -> None:
        self.oidc = oidc
        self.engine = engine
        self.service = service
        self.ttl = ttl
        self.clock = clock
        self.now = now
        self.max_entries = max_entries
        self._salt = secrets.token_bytes(32)
        self._cache: OrderedDict[bytes, _Cached] = OrderedDict()
        self._locks: dict[bytes, asyncio.Lock] = {}
        self.requests = TokenBuckets(rate, burst, clock=clock)
        # failed verifications per key id: a guessed secret costs an scrypt each, so
        # guessing is slowed down without touching the real key's own bucket
        self.failures = TokenBuckets(1.0, 10, clock=clock)

    def limit(self, identity: Identity) -> None:
        wait = self.requests.take(identity.key_id)
        if wait is not None:
            raise RateLimitedError(
                f"rate limit of key {identity.key_id} reached ({self.requests.rate:g}/s, "
                f"burst {self.requests.burst:g}); retry later",
                wait,
            )

    def _digest(self, token: str) -> bytes:
        return hmac.digest(self._salt, token.encode(), "sha256")

    async def _load(self, key_id: str) -> KeyRecord | None:
        async with self.engine.connect() as conn:
            return await load_key(conn, key_id)

    def _remember(self, digest: bytes, record: KeyRecord) -> None:
        self._cache[digest] = _Cached(record, self.clock())
        self._cache.move_to_end(digest)
        while len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)

    async def identify(self, token: str) -> Identity:
        if self.oidc is not None and _looks_like_jwt(token):
            return await self.oidc.identify(token)
        digest = self._digest(token)
        cached = self._cache.get(digest)
        if cached is not None and self.clock() - cached.checked_at <= self.ttl:
            return check_record(cached.record, self.now())
        parsed = parse_token(token)
        if parsed is None:
            raise AuthenticationError("malformed API key", reason="malformed")
        lock = self._locks.setdefault(digest, asyncio.Lock())
        try:
            async with lock:  # one scrypt per token even when many requests arrive at once
                return await self._identify(digest, parsed)
        finally:
            if not lock.locked():
                self._locks.pop(digest, None)

    async def _identify(self, digest: bytes, parsed: tuple[str, str]) -> Identity:
        cached = self._cache.get(digest)
        if cached is not None and self.clock() - cached.checked_at <= self.ttl:
            return check_record(cached.record, self.now())  # verified while we waited
        record = await self._load(parsed[0])
        if record is None:
            self._cache.pop(digest, None)
            raise AuthenticationError("unknown or wrong API key", reason="invalid")
        if cached is None or cached.record.secret_hash != record.secret_hash:
            wait = self.failures.take(parsed[0], spend=False)
            if wait is not None:
                raise RateLimitedError(
                    f"too many failed attempts for key {parsed[0]}; retry later", wait
                )
            if not await asyncio.to_thread(verify_secret, parsed[1], record.secret_hash):
                self.failures.take(parsed[0])
                self._cache.pop(digest, None)
                raise AuthenticationError("unknown or wrong API key", reason="invalid")
        self._remember(digest, record)
        return check_record(record, self.now())


# -- Google ID tokens of other services (OIDC) ----------------------------------------


def parse_service_accounts(value: str) -> dict[str, Role]:
    """`a@p.iam.gserviceaccount.com=operator,b@...=viewer` -> {email: role}."""
    accounts: dict[str, Role] = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        email, _, role = item.partition("=")
        if role not in ROLES or "@" not in email:
            raise ValueError(f"{item!r}: give EMAIL=ROLE with a role of {', '.join(ROLES)}")
        accounts[email.strip()] = role
    return accounts


class OidcCallers:
    """Service accounts that call with a Google-signed ID token instead of a key.

    Verified by the bus push endpoint's verifier (issuer, audience, signature, expiry,
    verified email of an allowed account); each account has the role given to it.
    """

    def __init__(self, certs_url: str, audience: str, accounts: dict[str, Role]) -> None:
        from fusion_prime.platform.bus.pubsub import PushTokenVerifier

        self.accounts = accounts
        self.verifier = PushTokenVerifier(certs_url, audience, set(accounts))

    async def identify(self, token: str) -> Identity:
        from fusion_prime.platform.bus.pubsub import PushAuthError

        try:
            claims = await self.verifier.verify(f"Bearer {token}")
        except PushAuthError as exc:
            if exc.status == 403:
                raise AuthenticationError(
                    "the ID token is not from an allowed service account", reason="oidc"
                ) from None
            if exc.status == 401:
                raise AuthenticationError(
                    f"ID token refused: {exc.detail}", reason="oidc"
                ) from None
            raise
        email = str(claims["email"])
        return Identity(f"oidc:{email}", email, self.accounts[email], kind="oidc")

    @classmethod
    def from_settings(cls, settings: Any) -> OidcCallers | None:
        if not settings.auth_oidc_audience:
            return None
        accounts = parse_service_accounts(settings.auth_service_accounts)
        return cls(settings.push_certs_url, settings.auth_oidc_audience, accounts)


def _looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2 and not token.startswith(f"{KEY_PREFIX}_")


# -- FastAPI dependencies and route rules --------------------------------------------

_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="`Authorization: Bearer fpk_<key id>_<secret>` (see docs/auth.md)",
)


def _authenticator(request: Request) -> Authenticator:
    auth: Authenticator = request.app.state.authenticator
    return auth


async def authenticate(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Identity:
    """The caller's identity, or 401 (problem+json with a WWW-Authenticate challenge)."""
    auth = _authenticator(request)
    if credentials is None:
        AUTH_REFUSALS.labels(auth.service, "missing").inc()
        raise AuthenticationError(
            "missing credentials: send Authorization: Bearer <API key>",
            reason="missing",
            error=None,
        )
    try:
        identity = await auth.identify(credentials.credentials)
    except RateLimitedError:
        AUTH_REFUSALS.labels(auth.service, "guessing").inc()
        raise
    except AuthenticationError as exc:
        AUTH_REFUSALS.labels(auth.service, exc.reason).inc()
        parsed = parse_token(credentials.credentials)
        log.info("request refused", reason=exc.reason, key_id=parsed[0] if parsed else None)
        raise
    try:
        auth.limit(identity)
    except RateLimitedError:
        AUTH_REFUSALS.labels(auth.service, "rate").inc()
        raise
    request.state.identity = identity
    return identity


Caller = Annotated[Identity, Depends(authenticate)]


class RoleRule:
    """The route needs a key with this role (admin may do everything, all may read)."""

    def __init__(self, role: Role) -> None:
        self.role = role

    async def __call__(self, request: Request, identity: Caller) -> Identity:
        if not identity.may(self.role):
            AUTH_REFUSALS.labels(_authenticator(request).service, "role").inc()
            raise ForbiddenError(
                f"this needs the role {self.role!r}; the key {identity.key_id} has the role "
                f"{identity.role!r}",
                required_role=self.role,
            )
        return identity

    def __repr__(self) -> str:
        return f"RoleRule({self.role!r})"


class SignedRule:
    """The route authenticates its caller itself, with a provider's signature (a webhook
    from the KYC or SMS provider): no API key, but never open. Declares; checks nothing."""

    def __init__(self, scheme: str) -> None:
        self.scheme = scheme

    async def __call__(self) -> None:
        return None

    def __repr__(self) -> str:
        return f"SignedRule({self.scheme!r})"


RULES: dict[Role, RoleRule] = {role: RoleRule(role) for role in ROLES}
Rule = RoleRule | SignedRule


def requires(role: Role) -> list[Any]:
    """`@router.post(..., dependencies=requires("operator"))`: the route's one rule."""
    return [Depends(RULES[role])]


def signed_by(scheme: str) -> list[Any]:
    return [Depends(SignedRule(scheme))]


def public_route(reason: str) -> list[Any]:
    """`dependencies=public_route("why")`: a route that is open on purpose (a sign-in page,
    a development stand-in for a public API). It adds no check; it makes the choice
    explicit and reviewable, and `fusion-prime audit` (FP502) accepts only a route that
    has a rule, an identity parameter or this declaration."""
    if not reason.strip():
        raise ValueError("a public route needs the reason it is public")
    return []


def _rules_in(dependant: Dependant) -> list[Rule]:
    found: list[Rule] = []
    for dep in dependant.dependencies:
        if isinstance(dep.call, RoleRule | SignedRule):
            found.append(dep.call)
        found.extend(_rules_in(dep))
    return found


def route_rule(route: APIRoute) -> Rule | None:
    """The route's rule: its strictest role (a non-viewer one wins), or its signature."""
    rules = _rules_in(route.dependant)
    roles = [r for r in rules if isinstance(r, RoleRule)]
    if roles:
        return next((r for r in roles if r.role != "viewer"), roles[0])
    return rules[0] if rules else None


def api_routes(app: FastAPI) -> list[APIRoute]:
    """The app's API routes, also those of included routers (FastAPI includes lazily)."""
    routes: list[APIRoute] = []
    for ctx in iter_route_contexts(app.routes):
        route = ctx.original_route
        if isinstance(route, APIRoute):
            routes.append(route)
    return routes


def route_table(app: FastAPI) -> list[tuple[APIRoute, Rule | None]]:
    """Every API route of an app with its rule (None: open, or missing a rule)."""
    return [(r, route_rule(r)) for r in api_routes(app)]


def unprotected_routes(app: FastAPI) -> list[str]:
    """Routes without a rule outside the open paths (what the route-table test fails on)."""
    return [
        f"{sorted(route.methods or ())} {route.path}"
        for route, rule in route_table(app)
        if rule is None and route.path not in OPEN_PATHS
    ]


def document_rules(router: APIRouter) -> None:
    """Put each route's role and its 401/403 answers into the OpenAPI document.

    Called on a router before it is included: FastAPI copies a route's OpenAPI fields
    when it includes the router."""
    for route in router.routes:
        if not isinstance(route, APIRoute):
            continue
        rule = route_rule(route)
        if isinstance(rule, RoleRule):
            route.openapi_extra = {**(route.openapi_extra or {}), "x-required-role": rule.role}
            route.responses.setdefault(
                401, {"description": "missing, unknown, revoked or expired key"}
            )
            if rule.role != "viewer":
                route.responses.setdefault(403, {"description": f"needs the role {rule.role}"})
        elif isinstance(rule, SignedRule):
            route.openapi_extra = {**(route.openapi_extra or {}), "x-signed-by": rule.scheme}


router = APIRouter(tags=["auth"])


@router.get("/auth/whoami", dependencies=requires("viewer"))
async def whoami(identity: Caller) -> dict[str, str]:
    """Who the presented key is (the console signs a user in with it)."""
    return identity.public()
