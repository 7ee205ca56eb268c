"""Normalisation shared by loading and screening, so both sides compare the same forms."""

from __future__ import annotations

import re
import unicodedata

_NON_WORD = re.compile(r"[^\w\s]+", re.UNICODE)
_SPACES = re.compile(r"\s+")
_EVM = re.compile(r"^0x[0-9a-fA-F]{40}$")
# bech32 / bech32m human-readable prefixes of the chains OFAC lists; bech32 is
# case-insensitive by definition (mixed case is invalid), so lower case is canonical.
_BECH32 = re.compile(r"^(bc1|tb1|ltc1|bcrt1)[0-9a-z]+$", re.IGNORECASE)


def normalise_name(name: str) -> str:
    """Casefold, strip diacritics and punctuation, sort tokens.

    Sorting makes "SMITH, John" and "John Smith" the same string, which is what OFAC's
    "LAST, First" spelling against a customer's "First Last" needs.
    """
    decomposed = unicodedata.normalize("NFKD", name)
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    cleaned = _NON_WORD.sub(" ", stripped.casefold()).replace("_", " ")
    tokens = sorted(t for t in _SPACES.split(cleaned) if t)
    return " ".join(tokens)


def normalise_address(address: str) -> str:
    """EVM hex and bech32 addresses are case-insensitive (lowered); base58 ones
    (legacy Bitcoin, Tron, Solana, ...) are case-sensitive and kept as written."""
    value = address.strip()
    if _EVM.match(value):
        return value.lower()
    if _BECH32.match(value):
        return value.lower()
    return value
