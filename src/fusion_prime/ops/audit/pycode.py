"""What a Python file does with its database URL, read from its syntax tree.

Finds: reads of a database URL from the environment or a settings class (and their
defaults), branches that swap in a mock/in-memory/SQLite store when the URL is missing,
committed credentials in string constants, signs of the service's own authentication,
ServiceSpec declarations (this repository's services: each has a database; with their
`required_secrets` and `settings_cls`), the settings fields a process cannot start without
(no default), and Pub/Sub subscriptions created without a dead-letter policy.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass, field

from fusion_prime.ops.audit.credentials import credential_in
from fusion_prime.ops.audit.model import Finding
from fusion_prime.platform.database import redact_text

DB_URL_NAMES = frozenset(
    {
        "DATABASE_URL",
        "DATABASE_URI",
        "DATABASE_DSN",
        "DB_URL",
        "DB_URI",
        "DB_DSN",
        "SQLALCHEMY_DATABASE_URI",
        "SQLALCHEMY_DATABASE_URL",
        "POSTGRES_URL",
        "POSTGRES_DSN",
        "POSTGRESQL_URL",
        "PG_DSN",
        "PG_URL",
    }
)
DB_URL_SUFFIXES = ("_DATABASE_URL", "_DATABASE_URI", "_DB_URL", "_DB_URI", "_DB_DSN")
ENV_GETTERS = frozenset({"getenv", "get", "setdefault"})
FALLBACK_WORDS = (
    "mock",
    "fake",
    "inmemory",
    "in_memory",
    "memorystore",
    "memorycache",
    "memoryrepo",
    "stub",
    "dummy",
    "sqlite",
)
AUTH_NAMES = frozenset(
    {
        "HTTPBearer",
        "HTTPBasic",
        "HTTPDigest",
        "APIKeyHeader",
        "APIKeyQuery",
        "APIKeyCookie",
        "OAuth2PasswordBearer",
        "OAuth2AuthorizationCodeBearer",
        "OpenIdConnect",
        "SecurityScopes",
        "Security",
        "verify_oauth2_token",
        "verify_token",
        "verify_firebase_token",
        "UnauthorizedError",
    }
)


# FP502: route decorators, the calls that give a route its rule, and the open paths
ROUTE_METHODS = frozenset({"get", "post", "put", "patch", "delete", "head", "options"})
ROUTE_RULES = frozenset({"requires", "signed_by", "public_route", "RoleRule", "SignedRule"})
# a route parameter of these types is an identity dependency (platform.auth.Caller, the
# console's signed-in user): the route cannot run without a checked caller
IDENTITY_PARAMETERS = frozenset({"Caller", "CurrentUser"})
OPEN_ROUTE_PATHS = frozenset({"/health/live", "/health/ready", "/metrics"})


def is_db_url_name(name: str) -> bool:
    upper = name.upper()
    return upper in DB_URL_NAMES or upper.endswith(DB_URL_SUFFIXES)


SECRET_TYPES = frozenset({"SecretStr", "SecretBytes"})


@dataclass(frozen=True)
class RequiredSetting:
    """An environment variable the code cannot start without (no default)."""

    env: str
    line: int
    secret: bool  # declared a secret (required_secrets, or a SecretStr field)


@dataclass
class SettingsClass:
    name: str
    bases: tuple[str, ...]
    required: tuple[RequiredSetting, ...]


@dataclass(frozen=True)
class SpecDecl:
    """What a ServiceSpec(...) call says about the environment its service needs."""

    required_secrets: tuple[str, ...]
    settings_cls: str | None


@dataclass
class PyFacts:
    path: str
    reads_db_url: bool = False
    has_auth: bool = False
    # ServiceSpec(name=..., db_slug=...) declared here: (name, db_slug, line)
    specs: list[tuple[str, str, int]] = field(default_factory=list)
    spec_decls: dict[str, SpecDecl] = field(default_factory=dict)
    settings_classes: list[SettingsClass] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)


def _const_str(node: ast.AST | None) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return None


def _callee_name(func: ast.AST) -> str:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return ""


def _is_environ(node: ast.AST) -> bool:
    """`os.environ` or a bare `environ` (from os import environ)."""
    if isinstance(node, ast.Attribute):
        return node.attr == "environ"
    return isinstance(node, ast.Name) and node.id == "environ"


def _env_read(node: ast.AST) -> tuple[str, ast.AST | None, bool] | None:
    """(variable name, default expression, has_default) of an environment read."""
    if isinstance(node, ast.Call):
        func = node.func
        getter = _callee_name(func)
        if getter not in ENV_GETTERS or not node.args:
            return None
        if getter in {"get", "setdefault"} and not (
            isinstance(func, ast.Attribute) and _is_environ(func.value)
        ):
            return None
        if getter == "getenv" and isinstance(func, ast.Attribute):
            if not (isinstance(func.value, ast.Name) and func.value.id == "os"):
                return None
        name = _const_str(node.args[0])
        if name is None:
            return None
        default: ast.AST | None = node.args[1] if len(node.args) > 1 else None
        for kw in node.keywords:
            if kw.arg == "default":
                default = kw.value
        return name, default, default is not None
    if isinstance(node, ast.Subscript) and _is_environ(node.value):
        name = _const_str(node.slice)
        if name is not None:
            return name, None, False
    return None


def _describe_default(node: ast.AST) -> str | None:
    """None when the default is harmless (None); otherwise what kind of fallback it is."""
    if isinstance(node, ast.Constant):
        if node.value is None:
            return None
        if isinstance(node.value, str):
            v = node.value.strip().lower()
            if not v:
                return "an empty string"
            if v.startswith("sqlite"):
                return f"a SQLite URL ({node.value!r})"
            if "localhost" in v or "127.0.0.1" in v:
                return "a localhost URL"
            # redacted before cutting: the report must not copy the password it flags
            return f"a hard-coded URL ({redact_text(node.value)[:40]!r})"
        return f"the constant {node.value!r}"
    return "a computed value"


def _mentions(node: ast.AST, tainted: set[str]) -> bool:
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name) and sub.id in tainted:
            return True
        if isinstance(sub, ast.Attribute) and is_db_url_name(sub.attr):
            return True
        read = _env_read(sub)
        if read is not None and is_db_url_name(read[0]):
            return True
    return False


def _fallback_in(nodes: list[ast.stmt] | ast.AST) -> tuple[ast.AST, str] | None:
    """The first mock/in-memory/SQLite store construction inside these statements."""
    roots = nodes if isinstance(nodes, list) else [nodes]
    for root in roots:
        for sub in ast.walk(root):
            if isinstance(sub, ast.Call):
                name = _callee_name(sub.func)
                lowered = name.lower()
                if name and any(w in lowered for w in FALLBACK_WORDS):
                    return sub, f"{name}()"
            value = _const_str(sub)
            if value is not None:
                low = value.lower()
                if low.startswith(("sqlite:", "sqlite+")) or low == ":memory:":
                    return sub, repr(value)
    return None


def _guarded_apps(module: ast.Module) -> set[str]:
    """Names bound to `FastAPI(dependencies=[Depends(...)])` or `APIRouter(...)` with a
    dependency: every route on them passes that dependency first (FP502)."""
    names: set[str] = set()
    for stmt in module.body:
        if not (isinstance(stmt, ast.Assign) and isinstance(stmt.value, ast.Call)):
            continue
        if _callee_name(stmt.value.func) not in ("FastAPI", "APIRouter"):
            continue
        for kw in stmt.value.keywords:
            if kw.arg == "dependencies" and any(
                isinstance(sub, ast.Call)
                and _callee_name(sub.func) in ROUTE_RULES | {"Depends", "Security"}
                for sub in ast.walk(kw.value)
            ):
                names.update(t.id for t in stmt.targets if isinstance(t, ast.Name))
    return names


class _Visitor(ast.NodeVisitor):
    def __init__(self, facts: PyFacts, *, test_file: bool) -> None:
        self.facts = facts
        self.test_file = test_file
        self.tainted: set[str] = set()
        self.docstrings: set[int] = set()
        self.guarded_apps: set[str] = set()

    # -- helpers -------------------------------------------------------------------

    def _add(self, rule: str, node: ast.AST, message: str) -> None:
        if rule == "FP301" and self.test_file:
            return  # tests carry throw-away credentials on purpose (redaction tests)
        line = getattr(node, "lineno", 1)
        self.facts.findings.append(Finding(rule, self.facts.path, line, message))

    def _taint_targets(self, targets: list[ast.expr]) -> None:
        for t in targets:
            for sub in ast.walk(t):
                if isinstance(sub, ast.Name):
                    self.tainted.add(sub.id)

    # -- visits ---------------------------------------------------------------------

    def visit_Module(self, node: ast.Module) -> None:
        self._note_docstring(node)
        self.guarded_apps = _guarded_apps(node)
        self.generic_visit(node)

    def _note_docstring(self, node: ast.AST) -> None:
        body = getattr(node, "body", None)
        if body and isinstance(body[0], ast.Expr) and _const_str(body[0].value) is not None:
            self.docstrings.add(id(body[0].value))

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._function(node)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self._function(node)

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self._note_docstring(node)
        for decorator in node.decorator_list:
            self._route_rule(node, decorator)
        outer = self.tainted
        self.tainted = set(outer)
        self.generic_visit(node)
        self.tainted = outer

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self._note_docstring(node)
        settings_class = any(
            _callee_name(b).endswith(("Settings", "BaseModel", "Config")) for b in node.bases
        )
        if settings_class:
            for stmt in node.body:
                if (
                    isinstance(stmt, ast.AnnAssign)
                    and isinstance(stmt.target, ast.Name)
                    and is_db_url_name(stmt.target.id)
                ):
                    self.facts.reads_db_url = True
                    default = stmt.value
                    if isinstance(default, ast.Call) and _callee_name(default.func) == "Field":
                        continue  # the Field() call is checked by visit_Call
                    if default is not None:
                        why = _describe_default(default)
                        if why:
                            self._add(
                                "FP201",
                                stmt,
                                f"settings field {stmt.target.id} defaults to {why}",
                            )
        if any(_callee_name(b).endswith("Settings") for b in node.bases):
            self.facts.settings_classes.append(
                SettingsClass(
                    node.name,
                    tuple(_callee_name(b) for b in node.bases),
                    tuple(_required_fields(node)),
                )
            )
        self.generic_visit(node)

    def visit_Assign(self, node: ast.Assign) -> None:
        self._assignment(node.targets, node.value)
        self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            self._assignment([node.target], node.value)
        self.generic_visit(node)

    def visit_NamedExpr(self, node: ast.NamedExpr) -> None:
        self._assignment([node.target], node.value)
        self.generic_visit(node)

    def _assignment(self, targets: list[ast.expr], value: ast.expr) -> None:
        if _mentions(value, self.tainted):
            self._taint_targets(targets)
        text = _const_str(value)
        if text is not None:
            for t in targets:
                name = t.id if isinstance(t, ast.Name) else _callee_name(t)
                reason = credential_in(name or None, text)
                if reason:
                    self._add("FP301", value, f"{reason} assigned to {name or 'a target'}")

    def visit_BoolOp(self, node: ast.BoolOp) -> None:
        # os.environ.get("DATABASE_URL") or "sqlite:///./x.db"
        if isinstance(node.op, ast.Or):
            for i, value in enumerate(node.values[:-1]):
                read = _env_read(value)
                if read is not None and is_db_url_name(read[0]):
                    for alt in node.values[i + 1 :]:
                        why = _describe_default(alt)
                        if why:
                            self._add("FP201", node, f"{read[0]} falls back to {why} through `or`")
                            break
        self.generic_visit(node)

    def visit_If(self, node: ast.If) -> None:
        self._branch(node.test, [node.body, node.orelse], node)
        self.generic_visit(node)

    def visit_Try(self, node: ast.Try) -> None:
        # try: connect(os.environ["DATABASE_URL"]) except KeyError: sqlite / in-memory
        if any(_mentions(stmt, self.tainted) for stmt in node.body):
            self._branch_bodies([h.body for h in node.handlers], node)
        self.generic_visit(node)

    def visit_IfExp(self, node: ast.IfExp) -> None:
        self._branch(node.test, [[ast.Expr(node.body)], [ast.Expr(node.orelse)]], node)
        self.generic_visit(node)

    def _branch(self, test: ast.expr, branches: list[list[ast.stmt]], node: ast.AST) -> None:
        if _mentions(test, self.tainted):
            self._branch_bodies(branches, node)

    def _branch_bodies(self, branches: list[list[ast.stmt]], node: ast.AST) -> None:
        for branch in branches:
            found = _fallback_in(branch)
            if found is not None:
                where, what = found
                self._add(
                    "FP202",
                    where if hasattr(where, "lineno") else node,
                    f"switches to {what} depending on the database URL",
                )
                return

    def _route_rule(self, fn: ast.AST, decorator: ast.expr) -> None:
        """FP502: `@router.<method>("/path", ...)` without `dependencies=requires(...)` or
        `signed_by(...)` (the open health and metrics paths excepted)."""
        if not (
            isinstance(decorator, ast.Call)
            and isinstance(decorator.func, ast.Attribute)
            and decorator.func.attr in ROUTE_METHODS
            and decorator.args
        ):
            return
        path = _const_str(decorator.args[0])
        if path is None or not path.startswith("/") or path in OPEN_ROUTE_PATHS:
            return
        owner = decorator.func.value
        if isinstance(owner, ast.Name) and owner.id in self.guarded_apps:
            return  # the app or router checks every route it serves
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef) and any(
            isinstance(a.annotation, ast.Name) and a.annotation.id in IDENTITY_PARAMETERS
            for a in (*fn.args.args, *fn.args.kwonlyargs)
        ):
            return
        for kw in decorator.keywords:
            if kw.arg == "dependencies" and any(
                isinstance(sub, ast.Call) and _callee_name(sub.func) in ROUTE_RULES
                for sub in ast.walk(kw.value)
            ):
                return
        method = decorator.func.attr.upper()
        self._add("FP502", decorator, f"route {method} {path} has no authentication rule")

    def visit_Call(self, node: ast.Call) -> None:
        read = _env_read(node)
        if read is not None and is_db_url_name(read[0]):
            self.facts.reads_db_url = True
            name, default, has_default = read
            if has_default and default is not None:
                why = _describe_default(default)
                if why:
                    self._add("FP201", node, f"{name} is read with a default: {why}")
        callee = _callee_name(node.func)
        if callee == "Field":
            self._settings_field(node)
        elif callee == "ServiceSpec":
            self._service_spec(node)
        elif callee == "create_subscription":
            self._subscription(node)
        if callee in AUTH_NAMES:
            self.facts.has_auth = True
        for kw in node.keywords:
            text = _const_str(kw.value)
            if kw.arg and text is not None:
                reason = credential_in(kw.arg, text)
                if reason:
                    self._add("FP301", kw.value, f"{reason} passed as {kw.arg}=")
        self.generic_visit(node)

    def visit_Subscript(self, node: ast.Subscript) -> None:
        read = _env_read(node)
        if read is not None and is_db_url_name(read[0]):
            self.facts.reads_db_url = True
        self.generic_visit(node)

    def _settings_field(self, node: ast.Call) -> None:
        aliases = [
            _const_str(kw.value)
            for kw in node.keywords
            if kw.arg in {"alias", "validation_alias", "env"}
        ]
        names = [a for a in aliases if a and is_db_url_name(a)]
        if not names:
            return
        self.facts.reads_db_url = True
        default: ast.AST | None = node.args[0] if node.args else None
        for kw in node.keywords:
            if kw.arg == "default":
                default = kw.value
        if default is not None and not (
            isinstance(default, ast.Constant) and default.value is Ellipsis
        ):
            why = _describe_default(default)
            if why:
                self._add("FP201", node, f"settings field {names[0]} defaults to {why}")

    def _service_spec(self, node: ast.Call) -> None:
        kwargs = {kw.arg: kw.value for kw in node.keywords if kw.arg}
        name = _const_str(kwargs.get("name")) or _const_str(node.args[0] if node.args else None)
        slug = _const_str(kwargs.get("db_slug")) or _const_str(
            node.args[1] if len(node.args) > 1 else None
        )
        if name and slug:
            self.facts.specs.append((name, slug, node.lineno))
            self.facts.reads_db_url = True  # the platform reads DATABASE_URL for every spec
            secrets = kwargs.get("required_secrets")
            names: tuple[str, ...] = ()
            if isinstance(secrets, ast.Tuple | ast.List):
                names = tuple(n for n in map(_const_str, secrets.elts) if n)
            settings = kwargs.get("settings_cls")
            self.facts.spec_decls[name] = SpecDecl(
                names, _callee_name(settings) if settings is not None else None
            )

    def _subscription(self, node: ast.Call) -> None:
        def has_dlq(expr: ast.AST) -> bool:
            for sub in ast.walk(expr):
                if isinstance(sub, ast.keyword) and sub.arg == "dead_letter_policy":
                    return True
                if _const_str(sub) == "dead_letter_policy":
                    return True
            return False

        if not has_dlq(node):
            self._add("FP601", node, "create_subscription() without a dead_letter_policy")

    def visit_Name(self, node: ast.Name) -> None:
        if node.id in AUTH_NAMES:
            self.facts.has_auth = True

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if node.attr in AUTH_NAMES:
            self.facts.has_auth = True
        self.generic_visit(node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if any(alias.name in AUTH_NAMES for alias in node.names):
            self.facts.has_auth = True
        if node.module and node.module.endswith("platform.auth"):
            self.facts.has_auth = True

    def visit_Dict(self, node: ast.Dict) -> None:
        for key, value in zip(node.keys, node.values, strict=True):
            k, v = _const_str(key), _const_str(value)
            if k is not None and v is not None:
                reason = credential_in(k, v)
                if reason:
                    self._add("FP301", value, f"{reason} under key {k!r}")
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        # bare strings: PEM keys and URLs with passwords, whatever they are bound to
        if isinstance(node.value, str) and id(node) not in self.docstrings:
            reason = credential_in(None, node.value)
            if reason:
                self._add("FP301", node, reason)


def _required_fields(node: ast.ClassDef) -> Iterator[RequiredSetting]:
    """Fields of a settings class with no default: `x: T` or `x: T = Field(alias=...)`
    without a default or default_factory. The env name is the alias, else the field name
    (pydantic-settings matches it case-insensitively). Database URLs are FP101's."""
    for stmt in node.body:
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        annotation = {_callee_name(n) for n in ast.walk(stmt.annotation)}
        if "ClassVar" in annotation:
            continue
        env = stmt.target.id.upper()
        value = stmt.value
        if value is not None:
            if not (isinstance(value, ast.Call) and _callee_name(value.func) == "Field"):
                continue  # a plain default
            keywords = {kw.arg: kw.value for kw in value.keywords if kw.arg}
            first = value.args[0] if value.args else keywords.get("default")
            has_default = "default_factory" in keywords or (
                first is not None
                and not (isinstance(first, ast.Constant) and first.value is Ellipsis)
            )
            if has_default:
                continue
            alias = _const_str(keywords.get("alias")) or _const_str(
                keywords.get("validation_alias")
            )
            env = alias or env
        if not is_db_url_name(env):
            yield RequiredSetting(env, stmt.lineno, bool(annotation & SECRET_TYPES))


def _dedupe(findings: list[Finding]) -> Iterator[Finding]:
    seen: set[tuple[str, int]] = set()
    for f in findings:
        key = (f.rule, f.line)
        if key not in seen:
            seen.add(key)
            yield f


def is_test_file(path: str) -> bool:
    parts = path.split("/")
    name = parts[-1]
    return (
        "tests" in parts[:-1]
        or "test" in parts[:-1]
        or name.startswith("test_")
        or name.endswith("_test.py")
        or name == "conftest.py"
    )


def analyse_python(source: str, path: str) -> PyFacts:
    """Facts and per-file findings of one Python file. Credentials (FP301) are not reported
    in test files, which hold throw-away ones on purpose; everything else is."""
    facts = PyFacts(path)
    try:
        tree = ast.parse(source, filename=path)
    except (SyntaxError, ValueError):
        return facts
    _Visitor(facts, test_file=is_test_file(path)).visit(tree)
    facts.findings = list(_dedupe(facts.findings))
    return facts
