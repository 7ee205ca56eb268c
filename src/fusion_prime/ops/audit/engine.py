"""Walk a repository, parse each relevant file once, then apply the cross-file rules.

Per-file rules (defaults, fallbacks, credentials, subscriptions) come out of the parsers;
the rules that need both code and deploy config (FP101-104, FP401, FP501) are joined here:
a deploy target's code is the ServiceSpec named in its container args (`serve NAME`), or
else the Python files beside its deploy file (the `services/<name>/cloudbuild.yaml` layout
of the incident report).
"""

from __future__ import annotations

import fnmatch
import os
import time
import tomllib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from fusion_prime.ops.audit.deploy import (
    DeployFacts,
    Target,
    analyse_dotenv,
    analyse_shell,
    analyse_yaml,
)
from fusion_prime.ops.audit.model import Finding, Severity
from fusion_prime.ops.audit.pycode import (
    PyFacts,
    RequiredSetting,
    SettingsClass,
    analyse_python,
    is_db_url_name,
)
from fusion_prime.ops.audit.terraform import analyse_terraform

DEFAULT_EXCLUDED_DIRS = frozenset(
    {
        ".git",
        ".hg",
        ".venv",
        "venv",
        "node_modules",
        ".fusion-prime",
        ".cache",
        "__pycache__",
        ".terraform",
        ".mypy_cache",
        ".ruff_cache",
        ".pytest_cache",
        ".hypothesis",
        "site-packages",
        "build",
        "dist",
    }
)
MAX_FILE_BYTES = 1_000_000


@dataclass
class AuditResult:
    root: Path
    findings: list[Finding] = field(default_factory=list)
    files: int = 0
    targets: int = 0
    seconds: float = 0.0

    def at_or_above(self, severity: Severity) -> list[Finding]:
        return [f for f in self.findings if f.severity >= severity]


def configured_excludes(root: Path) -> list[str]:
    """`[tool.fusion-prime.audit] exclude = [...]` in the audited root's pyproject.toml."""
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file():
        return []
    try:
        data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError):
        return []
    value = data.get("tool", {}).get("fusion-prime", {}).get("audit", {}).get("exclude", [])
    return [str(v).strip("/") for v in value] if isinstance(value, list) else []


def _excluded(rel: str, patterns: Sequence[str]) -> bool:
    return any(rel == p or rel.startswith(p + "/") or fnmatch.fnmatch(rel, p) for p in patterns)


def _kind(name: str) -> str | None:
    if name.endswith(".py"):
        return "python"
    if name.endswith((".yaml", ".yml")):
        return "yaml"
    if name.endswith(".tf"):
        return "terraform"
    if name.endswith(".sh"):
        return "shell"
    if name == ".env" or name.startswith(".env.") or name.endswith(".env"):
        return "dotenv"
    return None


def discover(root: Path, excludes: Sequence[str]) -> Iterable[tuple[str, str, Path]]:
    """(relative POSIX path, kind, absolute path) of every file the audit reads."""
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        rel_dir = "" if rel_dir == "." else rel_dir
        dirnames[:] = sorted(
            d
            for d in dirnames
            if d not in DEFAULT_EXCLUDED_DIRS
            and not d.endswith(".egg-info")
            and not _excluded(f"{rel_dir}/{d}".lstrip("/"), excludes)
        )
        for name in sorted(filenames):
            kind = _kind(name)
            rel = f"{rel_dir}/{name}".lstrip("/")
            if kind and not _excluded(rel, excludes):
                yield rel, kind, Path(dirpath) / name


def run_audit(root: Path, *, exclude: Sequence[str] = ()) -> AuditResult:
    started = time.perf_counter()
    root = root.resolve()
    excludes = [*configured_excludes(root), *(e.strip("/") for e in exclude)]
    result = AuditResult(root)
    deploy = DeployFacts()
    python: list[PyFacts] = []
    for rel, kind, path in discover(root, excludes):
        try:
            if path.stat().st_size > MAX_FILE_BYTES:
                continue
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        result.files += 1
        if kind == "python":
            facts = analyse_python(text, rel)
            python.append(facts)
            result.findings.extend(facts.findings)
        elif kind == "yaml":
            analyse_yaml(text, rel, deploy)
        elif kind == "terraform":
            analyse_terraform(text, rel, deploy)
        elif kind == "shell":
            analyse_shell(text, rel, deploy)
        else:
            analyse_dotenv(text, rel, deploy)
    result.findings.extend(deploy.findings)
    result.findings.extend(_target_rules(deploy.targets, python))
    result.findings.extend(_shared_database(deploy.targets))
    result.findings.extend(_dead_letters(deploy))
    result.targets = len(deploy.targets)
    result.findings = sorted(set(result.findings), key=Finding.sort_key)
    result.seconds = time.perf_counter() - started
    return result


# -- cross-file rules -----------------------------------------------------------------


@dataclass
class _Code:
    reads_db: bool
    has_auth: bool
    where: str
    # env names the code cannot start without (besides the database URL)
    required: dict[str, RequiredSetting] = field(default_factory=dict)


class _SettingsIndex:
    """Settings classes by name, so a spec's `settings_cls` and its bases can be followed
    across files (a class in the service's own package wins over a namesake elsewhere)."""

    def __init__(self, python: list[PyFacts]) -> None:
        self.by_name: dict[str, list[tuple[str, SettingsClass]]] = defaultdict(list)
        for f in python:
            for cls in f.settings_classes:
                self.by_name[cls.name].append((f.path, cls))

    def required(self, name: str, near: str) -> list[RequiredSetting]:
        out: list[RequiredSetting] = []
        seen: set[str] = set()
        pending = [name]
        while pending:
            current = pending.pop()
            if current in seen or current not in self.by_name:
                continue
            seen.add(current)
            candidates = self.by_name[current]
            _path, cls = next(
                ((p, c) for p, c in candidates if p.startswith(near + "/")), candidates[0]
            )
            out.extend(cls.required)
            pending.extend(cls.bases)
        return out


def _code_for(
    target: Target, python: list[PyFacts], specs: dict[str, PyFacts], index: _SettingsIndex
) -> _Code | None:
    name = target.spec_name
    if name and name in specs:
        spec_file = specs[name]
        spec_dir = str(PurePosixPath(spec_file.path).parent)
        files = [f for f in python if f.path.startswith(spec_dir + "/")]
        code = _Code(True, any(f.has_auth for f in files), f"ServiceSpec {name!r}")
        decl = spec_file.spec_decls.get(name)
        if decl is not None:
            if decl.settings_cls:
                for req in index.required(decl.settings_cls, spec_dir):
                    code.required.setdefault(req.env, req)
            for env in decl.required_secrets:
                code.required[env] = RequiredSetting(env, 0, secret=True)
        return code
    config_dir = str(PurePosixPath(target.path).parent)
    if config_dir in {"", "."}:
        return None
    files = [f for f in python if f.path.startswith(config_dir + "/")]
    if not files:
        return None
    code = _Code(
        any(f.reads_db_url for f in files), any(f.has_auth for f in files), config_dir + "/"
    )
    for f in files:
        for cls in f.settings_classes:
            for req in index.required(cls.name, config_dir):
                code.required.setdefault(req.env, req)
    return code


def _required_settings(target: Target, code: _Code, what: str) -> Iterable[Finding]:
    """FP104: what the code cannot start without must come from the deploy (a secret for a
    secret). Names are matched case-insensitively, as pydantic-settings reads them."""
    if target.env_file:
        return  # environment not visible here
    secrets = {n.upper() for n in target.secrets}
    env = {n.upper() for n in target.env}
    for name, req in sorted(code.required.items()):
        key = name.upper()
        if key in secrets:
            continue
        if key in env:
            if req.secret:
                yield Finding(
                    "FP104",
                    target.path,
                    target.line,
                    f"{what}: {name}, a secret its code ({code.where}) requires, is a plain "
                    "environment variable, not from Secret Manager",
                )
            continue
        kind = "secret" if req.secret else "setting (no default)"
        yield Finding(
            "FP104",
            target.path,
            target.line,
            f"{what}: its code ({code.where}) requires the {kind} {name}, but the deploy "
            "does not provide it",
        )


def _target_rules(targets: list[Target], python: list[PyFacts]) -> Iterable[Finding]:
    specs = {name: f for f in python for name, _, _ in f.specs}
    index = _SettingsIndex(python)
    for t in targets:
        code = _code_for(t, python, specs, index)
        what = f"Cloud Run {t.kind} {t.name!r}"
        db_env = [n for n in t.env if is_db_url_name(n)]
        db_secret = [n for n in t.secrets if is_db_url_name(n)]
        reads_db = code is not None and code.reads_db
        if reads_db and not db_env and not db_secret and not t.env_file and code is not None:
            yield Finding(
                "FP101",
                t.path,
                t.line,
                f"{what}: its code ({code.where}) reads a database URL, but the deploy sets "
                "no DATABASE_URL and no secret for it",
            )
        for name in db_env:
            if name not in t.secrets:
                yield Finding(
                    "FP102",
                    t.path,
                    t.env[name][1],
                    f"{what}: {name} is a plain environment variable, not a secret",
                )
        if (reads_db or db_env or db_secret) and not t.cloudsql:
            yield Finding(
                "FP103",
                t.path,
                t.line,
                f"{what} uses a database but attaches no Cloud SQL instance",
            )
        if code is not None:
            yield from _required_settings(t, code, what)
        if t.public_line is not None and t.kind == "service" and not (code and code.has_auth):
            where = f"its code ({code.where}) has" if code else "no code found for it shows"
            yield Finding(
                "FP501",
                t.path,
                t.public_line,
                f"{what} allows unauthenticated calls and {where} no authentication of its own",
            )


def _shared_database(targets: list[Target]) -> Iterable[Finding]:
    users: dict[tuple[str, str], list[tuple[Target, int]]] = defaultdict(list)
    for t in targets:
        refs: list[tuple[str, str, int]] = [
            ("secret", secret, line)
            for name, (secret, line) in t.secrets.items()
            if is_db_url_name(name)
        ]
        refs.extend(("Cloud SQL instance", inst, line) for inst, line in t.cloudsql)
        for kind, ref, line in refs:
            if t.templated and "each." in ref:
                continue  # one distinct value per for_each instance
            users[(kind, ref)].append((t, line))
    for (kind, ref), uses in users.items():
        owners = sorted({t.owner for t, _ in uses})
        if len(owners) < 2:
            continue
        first = min(uses, key=lambda u: (u[0].path, u[1]))[0].owner
        for t, line in uses:
            if t.owner != first:
                yield Finding(
                    "FP401",
                    t.path,
                    line,
                    f"{t.owner!r} and {first!r} are both wired to the {kind} {ref!r}",
                )


def _dead_letters(deploy: DeployFacts) -> Iterable[Finding]:
    def key(expr: str) -> str:
        """`google_pubsub_topic.dl[each.key].id` -> `google_pubsub_topic.dl`; names as-is."""
        head = expr.split("[", 1)[0]
        for suffix in (".id", ".name"):
            head = head.removesuffix(suffix)
        return head

    dead_letter_topics = {key(s.dead_letter_topic) for s in deploy.subscriptions if s.dead_letter}
    for sub in deploy.subscriptions:
        if sub.dead_letter or (sub.topic and key(sub.topic) in dead_letter_topics):
            continue  # a dead-letter topic's own subscription is the end of the line
        yield Finding(
            "FP601", sub.path, sub.line, f"subscription {sub.name!r} has no dead-letter policy"
        )
