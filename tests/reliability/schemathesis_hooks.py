"""Schemathesis hooks for the contract fuzzing (loaded with SCHEMATHESIS_HOOKS).

Two additions to what schemathesis checks by itself:
- `problem_json_on_error`: DESIGN.md's error contract, every 4xx/5xx answer is
  application/problem+json with `title` and a `status` equal to the response's;
- OpenAPI links between the operations whose output feeds another (create a command ->
  read it, create a KYC case -> move it on, ...), so the stateful phase chains them with
  real ids instead of guessing ids that do not exist.
"""

from __future__ import annotations

from typing import Any

import schemathesis

PROBLEM_JSON = "application/problem+json"

# (source method, source path, status) -> [(link name, target operationId lookup key,
# parameters)]; targets are given as (method, path) and resolved to operationIds below
LINKS: dict[tuple[str, str, str], list[tuple[str, str, str, dict[str, str]]]] = {
    ("post", "/commands", "201"): [
        ("GetCommand", "get", "/commands/{command_id}", {"command_id": "$response.body#/id"}),
    ],
    ("post", "/webhooks", "201"): [
        ("GetWebhook", "get", "/webhooks/{webhook_id}", {"webhook_id": "$response.body#/id"}),
        (
            "EnableWebhook",
            "post",
            "/webhooks/{webhook_id}/enable",
            {"webhook_id": "$response.body#/id"},
        ),
        (
            "WebhookDeliveries",
            "get",
            "/webhooks/{webhook_id}/deliveries",
            {"webhook_id": "$response.body#/id"},
        ),
    ],
    ("post", "/kyc/cases", "201"): [
        ("GetKycCase", "get", "/kyc/cases/{case_id}", {"case_id": "$response.body#/id"}),
        (
            "DecideKycCase",
            "post",
            "/kyc/cases/{case_id}/transitions",
            {"case_id": "$response.body#/id"},
        ),
    ],
    ("post", "/contacts", "201"): [
        ("GetContact", "get", "/contacts/{contact_id}", {"contact_id": "$response.body#/id"}),
        (
            "DeleteContact",
            "delete",
            "/contacts/{contact_id}",
            {"contact_id": "$response.body#/id"},
        ),
    ],
    ("put", "/accounts/{account_id}/positions", "200"): [
        (
            "GetAccount",
            "get",
            "/accounts/{account_id}",
            {"account_id": "$request.path.account_id"},
        ),
        (
            "GetAccountHealth",
            "get",
            "/accounts/{account_id}/health",
            {"account_id": "$request.path.account_id"},
        ),
    ],
    ("put", "/feeds/{pair}", "200"): [
        ("GetFeed", "get", "/feeds/{pair}", {"pair": "$request.path.pair"}),
        ("GetPrice", "get", "/prices/{pair}", {"pair": "$request.path.pair"}),
    ],
    ("put", "/risk-parameters/{asset}", "201"): [
        ("GetRiskParameters", "get", "/risk-parameters/{asset}", {"asset": "$request.path.asset"}),
    ],
}


@schemathesis.hook
def before_load_schema(context: Any, raw_schema: dict[str, Any]) -> None:
    paths: dict[str, Any] = raw_schema.get("paths", {})
    for (method, path, status), links in LINKS.items():
        source = paths.get(path, {}).get(method)
        if source is None:
            continue  # the service has no such operation
        response = source.setdefault("responses", {}).get(status)
        if response is None:
            continue
        for name, t_method, t_path, params in links:
            target = paths.get(t_path, {}).get(t_method)
            if target is None:
                continue
            response.setdefault("links", {})[name] = {
                "operationId": target["operationId"],
                "parameters": params,
            }


@schemathesis.check
def problem_json_on_error(ctx: Any, response: Any, case: Any) -> bool | None:
    if response.status_code < 400:
        return None
    ctype = response.headers.get("content-type", [""])
    ctype = ctype[0] if isinstance(ctype, list) else ctype
    assert ctype.startswith(PROBLEM_JSON), (
        f"{response.status_code} answered with content-type {ctype!r}, not {PROBLEM_JSON}"
    )
    body = response.json()
    assert isinstance(body, dict), f"problem body is not an object: {body!r}"
    assert body.get("status") == response.status_code, f"problem status mismatch: {body}"
    assert isinstance(body.get("title"), str), f"problem without a title: {body}"
    assert body["title"], f"problem with an empty title: {body}"
    if response.status_code == 422:
        errors = body.get("errors")
        assert isinstance(errors, list), f"422 without errors: {body}"
        assert errors, f"422 names no field: {body}"
    return True
