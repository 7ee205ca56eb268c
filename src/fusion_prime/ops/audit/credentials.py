"""Is this string (under this name) a credential? Used on values the parsers extracted.

The checks look at one parsed value at a time (a YAML scalar, an HCL attribute, a Python
string constant, a gcloud flag value), never at raw file text. Placeholders such as
`PASSWORD`, `${VAR}`, `<pw>` or `***` are not credentials: docs and templates use them.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

SECRET_NAME_PARTS = ("PASSWORD", "PASSWD", "SECRET", "TOKEN", "API_KEY", "APIKEY", "PRIVATE_KEY")
# Hosts whose URLs carry the project key in the path (https://HOST/v2/<key>).
RPC_PROVIDERS = (
    "alchemy.com",
    "alchemyapi.io",
    "infura.io",
    "quiknode.pro",
    "ankr.com",
    "chainstack.com",
    "blastapi.io",
    "getblock.io",
    "drpc.org",
    "moralis-nodes.com",
)
KEY_QUERY_PARAMS = frozenset(
    {"key", "apikey", "api_key", "api-key", "token", "access_token", "auth", "secret"}
)
PLACEHOLDERS = frozenset(
    {
        "password",
        "passwd",
        "pw",
        "pass",
        "secret",
        "token",
        "xxx",
        "xxxx",
        "example",
        "redacted",
        "placeholder",
    }
)
PEM_PRIVATE = "PRIVATE KEY-----"


def is_placeholder(value: str) -> bool:
    v = value.strip()
    if not v or len(v) < 3:
        return True
    if any(mark in v for mark in ("$", "{", "}", "<", ">", "*", "...", "%(")):
        return True
    if v.lower() in PLACEHOLDERS:
        return True
    # USER, PASSWORD, MY_API_KEY: an upper-case word is a name, not a value
    return v.replace("_", "").replace("-", "").isalpha() and v.upper() == v


def name_suggests_secret(name: str) -> bool:
    upper = name.upper().replace("-", "_")
    return any(part in upper for part in SECRET_NAME_PARTS)


def _is_hex_key(value: str) -> bool:
    v = value[2:] if value.lower().startswith("0x") else value
    return len(v) == 64 and all(c in "0123456789abcdefABCDEF" for c in v)


def url_credential(value: str, *, rpc_context: bool = False) -> str | None:
    """What credential a URL carries: a password in its user info or an API key."""
    if "://" not in value or any(c.isspace() for c in value.strip()):
        return None
    try:
        parts = urlsplit(value.strip())
        password = parts.password
        host = (parts.hostname or "").lower()
    except ValueError:
        return None
    if password and not is_placeholder(password):
        return "a password inside a connection URL"
    for key, val in parse_qsl(parts.query):
        if key.lower() in KEY_QUERY_PARAMS and not is_placeholder(val) and len(val) >= 8:
            return f"an API key in the URL query ({key}=...)"
    if rpc_context or any(host == p or host.endswith("." + p) for p in RPC_PROVIDERS):
        segments = [s for s in parts.path.split("/") if s]
        if segments:
            last = segments[-1]
            if (
                len(last) >= 16
                and any(c.isdigit() for c in last)
                and any(c.isalpha() for c in last)
                and all(c.isalnum() or c in "-_" for c in last)
                and not is_placeholder(last)
            ):
                return "an API key inside an RPC URL"
    return None


def credential_in(name: str | None, value: str) -> str | None:
    """Why `value` (bound to `name`, when known) is a committed credential, or None."""
    if not isinstance(value, str) or len(value) < 3:
        return None
    if PEM_PRIVATE in value and "BEGIN" in value:
        return "a PEM private key"
    rpc = bool(name) and "RPC" in (name or "").upper()
    reason = url_credential(value, rpc_context=rpc)
    if reason:
        return reason
    if name and name_suggests_secret(name) and not is_placeholder(value):
        if "PRIVATE" in name.upper() and _is_hex_key(value):
            return f"a private key in {name}"
        if "://" in value:
            return None  # a URL without a secret part under a secret-ish name
        return f"a literal value for {name}"
    return None
