"""Is a user-given URL a safe place to send a request? (webhooks, Slack, SMS; SSRF guard)

Rules (docs/auth.md, "Outbound targets"):
- `https` only, unless FP_ENV=development or the development allowance is on;
- no credentials in the URL (`https://user:pw@host`);
- every address the host resolves to must be public: loopback, private, link-local,
  carrier-grade NAT, multicast, reserved and unspecified addresses are refused unless
  `FP_OUTBOUND_ALLOW_PRIVATE=true` (development and tests only; refused in production);
  cloud metadata addresses (169.254.169.254, fd00:ec2::254) are refused even then.

The check runs when a target is registered, and again at delivery, at connection time:
`guarded_transport()` resolves the host itself, checks every address and connects to a
checked one, so a name that resolved to a public address at registration and to
127.0.0.1 now (DNS rebinding) is refused. Redirects are never followed by the callers.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import aiohttp.abc
import httpcore
import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]

METADATA_ADDRESSES = frozenset(
    {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}
)
METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata"})
_CGNAT = ipaddress.ip_network("100.64.0.0/10")


class UnsafeTargetError(ValueError):
    """The URL may not be called; the message says why (safe to show the client)."""


async def system_resolve(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


@dataclass(frozen=True)
class TargetPolicy:
    allow_http: bool = False
    allow_private: bool = False
    resolve: Resolver = field(default=system_resolve, compare=False)

    @classmethod
    def from_settings(cls, settings: Any) -> TargetPolicy:
        allow_private = bool(getattr(settings, "outbound_allow_private", False))
        development = getattr(settings, "fp_env", "production") == "development"
        return cls(allow_http=development or allow_private, allow_private=allow_private)


def address_problem(address: IPAddress, policy: TargetPolicy) -> str | None:
    """Why `address` is refused, or None."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address in METADATA_ADDRESSES:
        return f"{address} is a cloud metadata address"
    if policy.allow_private:
        return None
    kinds = (
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("private", address.is_private),
        ("shared (CGNAT)", isinstance(address, ipaddress.IPv4Address) and address in _CGNAT),
        ("multicast", address.is_multicast),
        ("unspecified", address.is_unspecified),
        ("reserved", address.is_reserved),
    )
    for name, hit in kinds:
        if hit:
            return f"{address} is a {name} address"
    return None


def check_url_shape(url: str, policy: TargetPolicy) -> tuple[str, int]:
    """Scheme, credentials and host of a URL; returns (host, port) or raises."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeTargetError(f"not a usable URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise UnsafeTargetError("only http(s) URLs can be called")
    if parts.scheme == "http" and not policy.allow_http:
        raise UnsafeTargetError("only https URLs are accepted outside development")
    if parts.username is not None or parts.password is not None:
        raise UnsafeTargetError("credentials in the URL are not accepted; use the signing secret")
    host = (parts.hostname or "").rstrip(".").lower()
    if not host:
        raise UnsafeTargetError("the URL has no host")
    if host in METADATA_HOSTS:
        raise UnsafeTargetError(f"{host} is a cloud metadata host")
    return host, port or (443 if parts.scheme == "https" else 80)


async def checked_addresses(host: str, port: int, policy: TargetPolicy) -> list[str]:
    """The host's addresses, all of them allowed, or UnsafeTargetError."""
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        try:
            resolved = await policy.resolve(host, port)
        except OSError as exc:
            raise UnsafeTargetError(f"{host} does not resolve: {exc}") from None
        addresses = [ipaddress.ip_address(a.split("%")[0]) for a in resolved]
    if not addresses:
        raise UnsafeTargetError(f"{host} does not resolve")
    for address in addresses:
        problem = address_problem(address, policy)
        if problem is not None:
            raise UnsafeTargetError(f"{host} refused: {problem}")
    return [str(a) for a in addresses]


async def check_target(url: str, policy: TargetPolicy) -> None:
    """The registration check: shape and every resolved address."""
    host, port = check_url_shape(url, policy)
    await checked_addresses(host, port, policy)


async def check_before_connecting(url: str, policy: TargetPolicy) -> None:
    """The delivery check of a client that connects to an address literal without asking
    its resolver (aiohttp with `GuardedResolver`): a literal address is checked here,
    first, so a stored URL naming 127.0.0.1 is refused as loopback; then the URL's shape
    (https outside development, no credentials). A host name's addresses are checked by
    the resolver on every new connection."""
    parts = urlsplit(url)
    host = (parts.hostname or "").rstrip(".").lower()
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        await checked_addresses(host, parts.port or 0, policy)
    check_url_shape(url, policy)


class _GuardedBackend(httpcore.AsyncNetworkBackend):
    """Resolves and checks at connection time, then connects to the checked address."""

    def __init__(self, policy: TargetPolicy) -> None:
        self.policy = policy
        self.inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await checked_addresses(host.rstrip(".").lower(), port, self.policy)
        last: Exception | None = None
        for address in addresses:
            try:
                return await self.inner.connect_tcp(
                    address,
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise UnsafeTargetError("unix sockets are not outbound targets")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport with every new connection checked by the policy (TLS still
    verifies the certificate for the URL's host name, not the address)."""

    def __init__(self, policy: TargetPolicy, limits: httpx.Limits) -> None:
        super().__init__(limits=limits)
        ssl_context: ssl.SSLContext = httpx.create_ssl_context()
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_GuardedBackend(policy),
        )


def guarded_client(
    policy: TargetPolicy, *, timeout: float, limits: httpx.Limits
) -> httpx.AsyncClient:
    """A client for user-given URLs: checked connections, redirects not followed."""
    return httpx.AsyncClient(
        timeout=timeout, transport=GuardedTransport(policy, limits), follow_redirects=False
    )


class GuardedResolver(aiohttp.abc.AbstractResolver):
    """aiohttp's resolver for user-given targets: the host resolved and every address
    checked at connection time (DNS rebinding), as `_GuardedBackend` does for httpx."""

    def __init__(self, policy: TargetPolicy) -> None:
        self.policy = policy

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[aiohttp.abc.ResolveResult]:
        addresses = await checked_addresses(host.rstrip(".").lower(), port, self.policy)
        return [
            {
                "hostname": host,
                "host": a,
                "port": port,
                "family": socket.AF_INET6 if ":" in a else socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
            for a in addresses
        ]

    async def close(self) -> None:
        return None
