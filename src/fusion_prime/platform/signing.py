"""Webhook signatures: `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<raw body>">`.

One scheme for both directions: settlement signs what it delivers, compliance verifies
what the identity provider sends. Binding the timestamp into the MAC and bounding its
age stops a captured request from being replayed later.
"""

from __future__ import annotations

import hashlib
import hmac
import re

# ASCII digits only, at most 12 (unix seconds until year 33658): str.isdigit() accepts
# "\u00b2" and int() refuses it, and int() of more than 4300 digits raises too (both were 500s)
_TIMESTAMP = re.compile(r"[0-9]{1,12}")

# the HTTP header carrying the signature, in every direction
SIGNATURE_HEADER = "Fusion-Prime-Signature"


class SignatureError(Exception):
    """Why a signature was refused (never carries the secret)."""


def signature(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return mac.hexdigest()


def sign_header(secret: str, timestamp: int, body: bytes) -> str:
    return f"t={timestamp},v1={signature(secret, timestamp, body)}"


def verify_header(
    header: str | None, body: bytes, secret: str, *, now: float, tolerance: float
) -> int:
    """Check a header (several space-separated during key rotation); return its timestamp.

    The compare is constant-time; a timestamp more than `tolerance` seconds from `now`
    is refused.
    """
    if not header or not header.strip():
        raise SignatureError("missing signature header")
    last_error = "no v1 signature"
    for part in header.split():
        fields: dict[str, list[str]] = {}
        for item in part.split(","):
            key, sep, value = item.strip().partition("=")
            if sep:
                fields.setdefault(key, []).append(value)
        ts_values = fields.get("t")
        if not ts_values or not _TIMESTAMP.fullmatch(ts_values[0]):
            last_error = "missing or malformed timestamp"
            continue
        ts = int(ts_values[0])
        if abs(now - ts) > tolerance:
            last_error = "timestamp outside the tolerance window"
            continue
        expected = signature(secret, ts, body)
        for candidate in fields.get("v1", []):
            if hmac.compare_digest(expected, candidate.strip().lower()):
                return ts
        last_error = "signature mismatch"
    raise SignatureError(last_error)
