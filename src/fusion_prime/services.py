"""The services this distribution ships, by name. Each entry loads its ServiceSpec lazily."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from fusion_prime.platform.spec import ServiceSpec

# name -> "module:attribute" of its ServiceSpec. Only real, implemented services belong here.
_REGISTRY: dict[str, str] = {}


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
