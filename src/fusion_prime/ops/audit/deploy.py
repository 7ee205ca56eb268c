"""Deploy configuration, read with real parsers: Cloud Build YAML, shell, Terraform.

Everything is reduced to `Target`s (a Cloud Run service or job with its environment,
secrets, Cloud SQL instances and public access) and `Subscription`s, which the cross-file rules
in `engine.py` then compare with what the code needs. gcloud command lines are tokenised with
`shlex` (a shell lexer) and their flags parsed like gcloud does; YAML is composed into
nodes (for line numbers); HCL goes through python-hcl2's parse tree.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml

from fusion_prime.ops.audit.credentials import credential_in
from fusion_prime.ops.audit.model import Finding

Token = tuple[str, int]  # value, 1-based line

BOOL_FLAGS = frozenset(
    {
        "--allow-unauthenticated",
        "--no-allow-unauthenticated",
        "--no-traffic",
        "--async",
        "--quiet",
        "-q",
        "--execute-now",
        "--wait",
        "--no-cpu-throttling",
        "--cpu-throttling",
        "--enable-message-ordering",
        "--enable-exactly-once-delivery",
        "--clear-env-vars",
        "--clear-secrets",
        "--clear-cloudsql-instances",
        "--to-latest",
    }
)
SHELL_OPERATORS = frozenset({";", "&&", "||", "|", "&", "(", ")"})
SHELLS = frozenset({"bash", "sh", "/bin/bash", "/bin/sh", "/usr/bin/env"})


@dataclass
class Target:
    """A Cloud Run service or job as one deploy file configures it."""

    name: str
    kind: str  # "service" | "job"
    path: str
    line: int
    env: dict[str, Token] = field(default_factory=dict)
    secrets: dict[str, Token] = field(default_factory=dict)  # env name -> secret name
    cloudsql: list[Token] = field(default_factory=list)
    public_line: int | None = None
    args: list[str] = field(default_factory=list)
    env_file: bool = False  # --env-vars-file: environment not visible here
    templated: bool = False  # Terraform for_each: one resource, one instance per key

    @property
    def spec_name(self) -> str | None:
        """The service the container runs: `serve NAME` / `migrate NAME` in its args."""
        for i, arg in enumerate(self.args[:-1]):
            if arg in {"serve", "migrate"}:
                return self.args[i + 1]
        return None

    @property
    def owner(self) -> str:
        return self.spec_name or self.name


@dataclass
class Subscription:
    name: str
    path: str
    line: int
    dead_letter: bool
    topic: str = ""
    dead_letter_topic: str = ""


@dataclass
class DeployFacts:
    targets: list[Target] = field(default_factory=list)
    subscriptions: list[Subscription] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)


# -- gcloud command lines ------------------------------------------------------------


def split_list(value: str) -> list[str]:
    """gcloud list syntax: comma separated, or ^DELIM^ first to pick another delimiter."""
    delim = ","
    if value.startswith("^") and value.count("^") >= 2:
        end = value.index("^", 1)
        delim, value = value[1:end], value[end + 1 :]
    return [item for item in value.split(delim) if item]


def _parse_flags(tokens: list[Token]) -> tuple[list[Token], dict[str, list[Token]]]:
    positionals: list[Token] = []
    flags: dict[str, list[Token]] = {}
    i = 0
    while i < len(tokens):
        value, line = tokens[i]
        if value.startswith("-") and len(value) > 1:
            if "=" in value:
                name, _, arg = value.partition("=")
                flags.setdefault(name, []).append((arg, line))
            elif value in BOOL_FLAGS or i + 1 >= len(tokens) or tokens[i + 1][0].startswith("--"):
                flags.setdefault(value, []).append(("", line))
            else:
                flags.setdefault(value, []).append(tokens[i + 1])
                i += 1
        else:
            positionals.append((value, line))
        i += 1
    return positionals, flags


class _Collector:
    def __init__(self, path: str, facts: DeployFacts) -> None:
        self.path = path
        self.facts = facts
        self.targets: dict[tuple[str, str], Target] = {}

    def _target(self, kind: str, name: str, line: int) -> Target:
        key = (kind, name)
        if key not in self.targets:
            self.targets[key] = Target(name, kind, self.path, line)
            self.facts.targets.append(self.targets[key])
        return self.targets[key]

    def env_value(self, name: str, value: str, line: int, where: str) -> None:
        reason = credential_in(name, value)
        if reason:
            self.facts.findings.append(
                Finding("FP301", self.path, line, f"{reason} in {where} {name}")
            )

    def command(self, tokens: list[Token]) -> None:
        """One command line; only gcloud commands matter."""
        while tokens and "=" in tokens[0][0] and not tokens[0][0].startswith("-"):
            name, _, value = tokens[0][0].partition("=")
            self.env_value(name, value, tokens[0][1], "the shell variable")
            tokens = tokens[1:]
        if tokens and tokens[0][0] == "export":
            for value, line in tokens[1:]:
                name, sep, val = value.partition("=")
                if sep:
                    self.env_value(name, val, line, "the exported variable")
            return
        if not tokens or tokens[0][0].rsplit("/", 1)[-1] != "gcloud":
            return
        positionals, flags = _parse_flags(tokens[1:])
        named = [(p, ln) for p, ln in positionals if p not in {"alpha", "beta"}]
        words = [p for p, _ in named]

        def line_of(i: int) -> int:
            return named[i][1] if i < len(named) else tokens[0][1]

        if words[:2] == ["run", "deploy"] and len(words) > 2:
            self._deploy(self._target("service", words[2], line_of(2)), flags)
        elif (
            words[:2] == ["run", "jobs"]
            and len(words) > 3
            and words[2]
            in {
                "deploy",
                "create",
                "update",
            }
        ):
            self._deploy(self._target("job", words[3], line_of(3)), flags)
        elif words[:3] == ["run", "services", "update"] and len(words) > 3:
            self._deploy(self._target("service", words[3], line_of(3)), flags)
        elif words[:3] == ["run", "services", "add-iam-policy-binding"] and len(words) > 3:
            members = [v for v, _ in flags.get("--member", [])]
            if "allUsers" in members or "allAuthenticatedUsers" in members:
                self._target("service", words[3], line_of(3)).public_line = line_of(3)
        elif words[:3] == ["pubsub", "subscriptions", "create"] and len(words) > 3:
            line = line_of(3)
            topic = flags.get("--topic", [("", line)])[0][0]
            dlq = flags.get("--dead-letter-topic", [("", line)])[0][0]
            self.facts.subscriptions.append(
                Subscription(words[3], self.path, line, bool(dlq), topic, dlq)
            )

    def _deploy(self, target: Target, flags: dict[str, list[Token]]) -> None:
        for flag in ("--set-env-vars", "--update-env-vars"):
            for value, line in flags.get(flag, []):
                for item in split_list(value):
                    name, _, val = item.partition("=")
                    target.env[name] = (val, line)
                    self.env_value(name, val, line, "the plain environment variable")
        for flag in ("--set-secrets", "--update-secrets"):
            for value, line in flags.get(flag, []):
                for item in split_list(value):
                    name, _, ref = item.partition("=")
                    secret = ref.rsplit(":", 1)[0] if ":" in ref else ref
                    target.secrets[name] = (secret, line)
        for flag in ("--add-cloudsql-instances", "--set-cloudsql-instances"):
            for value, line in flags.get(flag, []):
                target.cloudsql.extend((v, line) for v in split_list(value))
        if "--allow-unauthenticated" in flags:
            target.public_line = flags["--allow-unauthenticated"][0][1]
        if "--no-allow-unauthenticated" in flags:
            target.public_line = None
        if "--env-vars-file" in flags:
            target.env_file = True
        for value, _ in flags.get("--args", []):
            target.args = split_list(value)
        for value, _ in flags.get("--command", []):
            target.args = [*split_list(value), *target.args]

    def script(self, text: str, first_line: int) -> None:
        for tokens in shell_commands(text, first_line):
            self.command(tokens)


def shell_commands(text: str, first_line: int) -> Iterator[list[Token]]:
    """Commands of a shell script, each a list of (word, line); continuation lines joined."""
    logical: list[tuple[str, int]] = []
    pending, start = "", first_line
    for offset, raw in enumerate(text.splitlines()):
        if not pending:
            start = first_line + offset
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        logical.append((pending + raw, start))
        pending = ""
    if pending:
        logical.append((pending, start))
    for line_text, line in logical:
        lexer = shlex.shlex(line_text, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        lexer.commenters = "#"
        try:
            words = list(lexer)
        except ValueError:
            continue  # unbalanced quotes: not a command we can read
        command: list[Token] = []
        for word in words:
            if word in SHELL_OPERATORS:
                if command:
                    yield command
                command = []
            else:
                command.append((word, line))
        if command:
            yield command


# -- YAML ------------------------------------------------------------------------------

try:
    _Loader: Any = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - PyYAML without libyaml
    _Loader = yaml.SafeLoader


def _scalar(node: yaml.Node | None) -> str | None:
    if isinstance(node, yaml.ScalarNode):
        return str(node.value)
    return None


def _mapping(node: yaml.Node) -> dict[str, yaml.Node]:
    if not isinstance(node, yaml.MappingNode):
        return {}
    return {str(k.value): v for k, v in node.value if isinstance(k, yaml.ScalarNode)}


def _script_first_line(node: yaml.ScalarNode) -> int:
    # block scalars (| or >) start on the line after their indicator
    return node.start_mark.line + (2 if node.style in {"|", ">"} else 1)


def _cloudbuild_step(collector: _Collector, step: yaml.Node) -> None:
    fields = _mapping(step)
    image = _scalar(fields.get("name")) or ""
    entrypoint = _scalar(fields.get("entrypoint"))
    script_node = fields.get("script")
    if isinstance(script_node, yaml.ScalarNode):
        collector.script(str(script_node.value), _script_first_line(script_node))
        return
    args_node = fields.get("args")
    arg_nodes: list[yaml.ScalarNode] = []
    if isinstance(args_node, yaml.SequenceNode):
        arg_nodes = [n for n in args_node.value if isinstance(n, yaml.ScalarNode)]
    elif isinstance(args_node, yaml.ScalarNode):
        arg_nodes = [args_node]
    words: list[Token] = [(str(n.value), n.start_mark.line + 1) for n in arg_nodes]
    if entrypoint in SHELLS or (not entrypoint and words and words[0][0] in SHELLS):
        if not entrypoint:
            arg_nodes, words = arg_nodes[1:], words[1:]
        if words and words[0][0] in {"-c", "-ec", "-eu", "-euc", "-exc"} and len(arg_nodes) > 1:
            collector.script(str(arg_nodes[1].value), _script_first_line(arg_nodes[1]))
        return
    line = step.start_mark.line + 1
    if entrypoint:
        words = [(entrypoint, line), *words]
    elif image.rsplit(":", 1)[0].endswith("cloud-builders/gcloud"):
        words = [("gcloud", line), *words]
    collector.command(words)


def _walk_yaml_values(node: yaml.Node, key: str | None, collector: _Collector) -> None:
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            _walk_yaml_values(v, _scalar(k), collector)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _walk_yaml_values(item, key, collector)
    elif isinstance(node, yaml.ScalarNode) and isinstance(node.value, str):
        reason = credential_in(key, node.value)
        if reason:
            collector.facts.findings.append(
                Finding("FP301", collector.path, node.start_mark.line + 1, reason)
            )


def _path(node: yaml.Node | None, *keys: str) -> yaml.Node | None:
    for key in keys:
        if node is None:
            return None
        node = _mapping(node).get(key)
    return node


def _knative(collector: _Collector, root: yaml.Node) -> bool:
    """A Cloud Run service/job manifest (`gcloud run services replace FILE`)."""
    fields = _mapping(root)
    api = _scalar(fields.get("apiVersion")) or ""
    kind = _scalar(fields.get("kind")) or ""
    if not (api.startswith(("serving.knative.dev/", "run.googleapis.com/"))) or kind not in {
        "Service",
        "Job",
    }:
        return False
    name_node = _path(root, "metadata", "name")
    name = _scalar(name_node) or "?"
    line = (name_node or root).start_mark.line + 1
    target = collector._target("service" if kind == "Service" else "job", name, line)
    template = _path(root, "spec", "template")
    if kind == "Job":
        template = _path(template, "spec", "template")
    annotations = _mapping(_path(template, "metadata", "annotations") or yaml.MappingNode("", []))
    sql = annotations.get("run.googleapis.com/cloudsql-instances")
    if isinstance(sql, yaml.ScalarNode):
        target.cloudsql.extend((v, sql.start_mark.line + 1) for v in split_list(str(sql.value)))
    containers = _path(template, "spec", "containers")
    for container in containers.value if isinstance(containers, yaml.SequenceNode) else []:
        for key in ("command", "args"):
            values = _mapping(container).get(key)
            if isinstance(values, yaml.SequenceNode):
                target.args.extend(str(v.value) for v in values.value if _scalar(v) is not None)
        env = _mapping(container).get("env")
        for item in env.value if isinstance(env, yaml.SequenceNode) else []:
            entry = _mapping(item)
            env_name = _scalar(entry.get("name")) or ""
            at = item.start_mark.line + 1
            secret = _scalar(_path(item, "valueFrom", "secretKeyRef", "name"))
            value = _scalar(entry.get("value"))
            if secret is not None:
                target.secrets[env_name] = (secret, at)
            elif value is not None:
                target.env[env_name] = (value, at)
                collector.env_value(env_name, value, at, "the plain environment variable")
    return True


def analyse_yaml(text: str, path: str, facts: DeployFacts) -> None:
    try:
        documents = list(yaml.compose_all(text, Loader=_Loader))
    except yaml.YAMLError:
        return
    collector = _Collector(path, facts)
    for root in documents:
        if root is None:
            continue
        steps = _mapping(root).get("steps")
        if isinstance(steps, yaml.SequenceNode):
            for step in steps.value:
                _cloudbuild_step(collector, step)
            # substitutions and other values can still hold credentials
            for key, node in _mapping(root).items():
                if key != "steps":
                    _walk_yaml_values(node, key, collector)
            for step in steps.value:
                env = _mapping(step).get("env")
                if isinstance(env, yaml.SequenceNode):
                    for item in env.value:
                        value = _scalar(item)
                        if value and "=" in value:
                            name, _, val = value.partition("=")
                            collector.env_value(name, val, item.start_mark.line + 1, "step env")
        elif not _knative(collector, root):
            _walk_yaml_values(root, None, collector)


def analyse_shell(text: str, path: str, facts: DeployFacts) -> None:
    _Collector(path, facts).script(text, 1)


def analyse_dotenv(text: str, path: str, facts: DeployFacts) -> None:
    collector = _Collector(path, facts)
    for tokens in shell_commands(text, 1):
        collector.command(tokens)
