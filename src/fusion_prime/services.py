"""The services this distribution ships, by name. Each entry loads its ServiceSpec lazily."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable

from fusion_prime.platform.spec import ServiceSpec

# name -> "module:attribute" of its ServiceSpec. A service is listed only when its package
# is part of this build, so nothing unimplemented is ever launched.
_KNOWN: dict[str, str] = {
    "settlement": "fusion_prime.settlement.spec:SPEC",
    "compliance": "fusion_prime.compliance.spec:SPEC",
    "risk": "fusion_prime.risk.spec:SPEC",
    "alerts": "fusion_prime.alerts.spec:SPEC",
    "oracle": "fusion_prime.oracle.spec:SPEC",
}


def _shipped(target: str) -> bool:
    module = target.split(":")[0]
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


_REGISTRY: dict[str, str] = {name: t for name, t in _KNOWN.items() if _shipped(t)}


def service_names() -> list[str]:
    return list(_REGISTRY)


def load_spec(name: str) -> ServiceSpec:
    try:
        target = _REGISTRY[name]
    except KeyError:
        known = ", ".join(_REGISTRY) or "none yet"
        raise KeyError(f"unknown service {name!r} (known: {known})") from None
    module, attr = target.split(":")
    spec = getattr(importlib.import_module(module), attr)
    if callable(spec) and not isinstance(spec, ServiceSpec):
        factory: Callable[[], ServiceSpec] = spec
        spec = factory()
    assert isinstance(spec, ServiceSpec)
    return spec


def all_specs() -> list[ServiceSpec]:
    return [load_spec(name) for name in _REGISTRY]
