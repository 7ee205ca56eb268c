"""Terraform files through python-hcl2: Cloud Run services/jobs, invoker bindings and
Pub/Sub subscriptions, with the line of each resource from the HCL parse tree."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import hcl2
from hcl2.utils import SerializationOptions
from lark import Token as LarkToken
from lark import Tree

from fusion_prime.ops.audit.credentials import credential_in
from fusion_prime.ops.audit.deploy import DeployFacts, Subscription, Target
from fusion_prime.ops.audit.model import Finding

RUN_SERVICES = frozenset({"google_cloud_run_v2_service", "google_cloud_run_service"})
RUN_JOBS = frozenset({"google_cloud_run_v2_job"})
RUN_IAM = frozenset(
    {
        "google_cloud_run_v2_service_iam_member",
        "google_cloud_run_v2_service_iam_binding",
        "google_cloud_run_service_iam_member",
        "google_cloud_run_service_iam_binding",
    }
)
PUBLIC_MEMBERS = frozenset({"allUsers", "allAuthenticatedUsers"})
_OPTIONS = SerializationOptions(strip_string_quotes=True, with_comments=False)


def _blocks(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, list):
        return [v for v in value if isinstance(v, dict)]
    if isinstance(value, dict):
        return [value]
    return []


def _walk_blocks(node: Any, name: str) -> Iterator[dict[str, Any]]:
    """Every nested block called `name`, at any depth."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == name:
                yield from _blocks(value)
            yield from _walk_blocks(value, name)
    elif isinstance(node, list):
        for item in node:
            yield from _walk_blocks(item, name)


def _expr(value: Any) -> str:
    """An attribute as text; `${x}` wrappers of pure expressions removed."""
    text = str(value) if value is not None else ""
    if text.startswith("${") and text.endswith("}") and text.count("${") == 1:
        return text[2:-1]
    return text


def _address_of(expr: str) -> str:
    """`google_x.name[each.key].id` -> `google_x.name`."""
    head = expr.split("[", 1)[0]
    parts = head.split(".")
    return ".".join(parts[:2])


def _label(child: Any) -> str | None:
    if isinstance(child, Tree):
        if str(child.data) == "identifier":
            return "".join(str(t) for t in child.children if isinstance(t, LarkToken))
        if str(child.data) == "string":
            parts: list[str] = []
            stack: list[Any] = [child]
            while stack:  # depth-first, in source order
                node = stack.pop()
                if isinstance(node, Tree):
                    if str(node.data) == "string_part":
                        parts.extend(str(t) for t in node.children if isinstance(t, LarkToken))
                    else:
                        stack.extend(reversed(node.children))
            return "".join(parts)
    return None


def _block_lines(tree: Tree[Any]) -> dict[tuple[str, ...], int]:
    """(block type, label, label) -> line of each top-level block."""
    lines: dict[tuple[str, ...], int] = {}
    body = next((c for c in tree.children if isinstance(c, Tree) and c.data == "body"), None)
    if body is None:
        return lines
    for child in body.children:
        if isinstance(child, Tree) and str(child.data) == "block":
            labels = []
            for part in child.children:
                label = _label(part)
                if label is None:
                    break
                labels.append(label)
            lines[tuple(labels)] = getattr(child.meta, "line", 1)
    return lines


def _strings(node: Any, key: str | None = None) -> Iterator[tuple[str | None, str]]:
    if isinstance(node, dict):
        for k, v in node.items():
            if not k.startswith("__"):
                yield from _strings(v, k)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item, key)
    elif isinstance(node, str):
        yield key, node


def analyse_terraform(text: str, path: str, facts: DeployFacts) -> None:
    try:
        tree = hcl2.parses_to_tree(text)
        data = hcl2.serialize(hcl2.transform(tree), serialization_options=_OPTIONS)
    except Exception:  # python-hcl2 raises lark errors of several kinds on bad input
        return
    lines = _block_lines(tree)
    public: list[tuple[str, int]] = []
    by_address: dict[str, Target] = {}
    for group in _blocks(data.get("resource")):
        for rtype, named in group.items():
            for rname, body in (named or {}).items():
                if not isinstance(body, dict):
                    continue
                line = lines.get(("resource", rtype, rname), 1)
                address = f"{rtype}.{rname}"
                _credentials(body, path, line, facts)
                if rtype in RUN_SERVICES or rtype in RUN_JOBS:
                    target = _run_target(body, rtype, path, line, address)
                    facts.targets.append(target)
                    by_address[address] = target
                elif rtype in RUN_IAM:
                    members = [str(body.get("member", ""))]
                    raw_members = body.get("members")
                    if isinstance(raw_members, list):
                        members.extend(str(m) for m in raw_members)
                    role = str(body.get("role", ""))
                    if role.endswith("run.invoker") and PUBLIC_MEMBERS & set(members):
                        ref = _expr(body.get("name") or body.get("service") or "")
                        public.append((_address_of(ref), line))
                elif rtype == "google_pubsub_subscription":
                    policy = _blocks(body.get("dead_letter_policy"))
                    dlq = _expr(policy[0].get("dead_letter_topic", "")) if policy else ""
                    facts.subscriptions.append(
                        Subscription(
                            _expr(body.get("name", rname)),
                            path,
                            line,
                            bool(policy),
                            _expr(body.get("topic", "")),
                            dlq,
                        )
                    )
    for address, line in public:
        if address in by_address:
            by_address[address].public_line = line
        else:
            facts.targets.append(Target(address, "service", path, line, public_line=line))


def _credentials(body: dict[str, Any], path: str, line: int, facts: DeployFacts) -> None:
    for key, value in _strings(body):
        reason = credential_in(key, value)
        if reason:
            facts.findings.append(Finding("FP301", path, line, f"{reason} in attribute {key}"))


def _run_target(body: dict[str, Any], rtype: str, path: str, line: int, address: str) -> Target:
    target = Target(
        _expr(body.get("name", address)),
        "job" if rtype in RUN_JOBS else "service",
        path,
        line,
        templated="for_each" in body or "count" in body,
    )
    for env in _walk_blocks(body, "env"):
        name = str(env.get("name", ""))
        if "value" in env:
            target.env[name] = (str(env["value"]), line)
        for ref in _walk_blocks(env, "secret_key_ref"):
            secret = ref.get("secret") or ref.get("name") or ""
            target.secrets[name] = (_expr(secret), line)
    for sql in _walk_blocks(body, "cloud_sql_instance"):
        instances = sql.get("instances", [])
        if isinstance(instances, list):
            target.cloudsql.extend((_expr(i), line) for i in instances)
        else:
            target.cloudsql.append((_expr(instances), line))
    for meta in _walk_blocks(body, "metadata"):
        annotations = meta.get("annotations")
        if isinstance(annotations, dict):
            value = annotations.get("run.googleapis.com/cloudsql-instances")
            if value:
                target.cloudsql.extend((v, line) for v in str(value).split(","))
    for container in _walk_blocks(body, "containers"):
        for key in ("command", "args"):
            values = container.get(key)
            if isinstance(values, list):
                target.args.extend(_expr(v) for v in values)
    return target
