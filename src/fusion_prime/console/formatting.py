"""How values are shown: base units with their asset's decimals, fixed-point values."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation


def units(raw: object, decimals: object) -> str:
    """Integer base units as a decimal amount: ('1500000', 6) -> '1.5'."""
    try:
        value = Decimal(int(str(raw))).scaleb(-int(str(decimals)))
    except (ValueError, InvalidOperation):
        return "?"
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def number(raw: object, places: int = 2) -> str:
    """A decimal string rounded for reading, with thousands separators; '-' for none."""
    if raw is None or raw == "":
        return "-"
    try:
        value = Decimal(str(raw))
    except InvalidOperation:
        return str(raw)
    if not value.is_finite():
        return str(value)
    return f"{value.quantize(Decimal(1).scaleb(-places)):,}"
