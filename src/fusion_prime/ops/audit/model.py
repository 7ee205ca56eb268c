"""Rules, severities and findings of `fusion-prime audit`.

Each rule turns one failure of the incident report into a check: the report's services
fell back to SQLite because their deploy files set no DATABASE_URL, no secret and no
Cloud SQL instance, and their code quietly accepted that. The fix text is what an
operator should do, so a finding is actionable without reading this module.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import IntEnum
from typing import Any


class Severity(IntEnum):
    LOW = 1
    MEDIUM = 2
    HIGH = 3
    CRITICAL = 4

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, value: str) -> Severity:
        try:
            return cls[value.strip().upper()]
        except KeyError:
            names = ", ".join(s.label for s in cls)
            raise ValueError(f"unknown severity {value!r} (one of {names})") from None


@dataclass(frozen=True)
class Rule:
    id: str
    name: str
    severity: Severity
    summary: str
    fix: str


RULES: dict[str, Rule] = {
    r.id: r
    for r in (
        Rule(
            "FP101",
            "deploy-missing-database-url",
            Severity.CRITICAL,
            "The service's code reads a database URL, but its deploy config sets no DATABASE_URL.",
            "Add `--set-secrets DATABASE_URL=fp-<service>-db-connection-string:latest` "
            "(Terraform: an env block with value_source.secret_key_ref).",
        ),
        Rule(
            "FP102",
            "database-url-not-from-secret",
            Severity.HIGH,
            "DATABASE_URL is set as a plain environment variable instead of a secret.",
            "Move the connection string to Secret Manager and use `--set-secrets "
            "DATABASE_URL=fp-<service>-db-connection-string:latest`.",
        ),
        Rule(
            "FP103",
            "deploy-missing-cloudsql-instance",
            Severity.CRITICAL,
            "The service reads a database, but its deploy config attaches no Cloud SQL instance.",
            "Add `--add-cloudsql-instances PROJECT:REGION:fp-<service>-db` "
            "(Terraform: a cloud_sql_instance volume mounted at /cloudsql).",
        ),
        Rule(
            "FP104",
            "deploy-missing-required-secret",
            Severity.HIGH,
            "The service's code requires a secret or setting with no default (ServiceSpec."
            "required_secrets, or a settings field without a default), but its deploy config "
            "does not provide it (or sets a secret as a plain environment variable): the "
            "service refuses to start.",
            "Create the secret fp-<service>-<name-in-kebab-case> in Secret Manager, grant its "
            "secretAccessor to the service's runtime account only, and add `--set-secrets "
            "NAME=fp-<service>-<name-kebab>:latest` (Terraform: an env block with "
            "value_source.secret_key_ref).",
        ),
        Rule(
            "FP201",
            "database-url-default",
            Severity.CRITICAL,
            "The code reads the database URL with a default value, so a missing "
            "variable silently selects another store.",
            "Read it without a default (os.environ['DATABASE_URL'] or a settings field with no "
            "default) and exit with a clear message when it is missing.",
        ),
        Rule(
            "FP202",
            "fallback-store",
            Severity.CRITICAL,
            "The code switches to a mock, in-memory or SQLite store when the database "
            "URL is missing or not PostgreSQL.",
            "Remove the fallback: refuse to start without a PostgreSQL DATABASE_URL.",
        ),
        Rule(
            "FP301",
            "plaintext-credential",
            Severity.HIGH,
            "A credential (password, API key, private key) is written in plain text in a "
            "committed file or a plain environment variable.",
            "Store it in Secret Manager, reference it with --set-secrets / secret_key_ref, "
            "and rotate the exposed value.",
        ),
        Rule(
            "FP401",
            "shared-database",
            Severity.HIGH,
            "Two services are wired to the same database secret or Cloud SQL instance.",
            "Give each service its own database (fp-<service>-db) and secret; share data "
            "through events or the owning service's API.",
        ),
        Rule(
            "FP501",
            "unauthenticated-without-auth",
            Severity.HIGH,
            "The service is deployed with --allow-unauthenticated (or allUsers invoker) but "
            "its code has no authentication of its own.",
            "Deploy with --no-allow-unauthenticated and grant roles/run.invoker to the callers' "
            "service accounts, or add authentication to the service itself.",
        ),
        Rule(
            "FP502",
            "route-without-auth-rule",
            Severity.HIGH,
            "An HTTP route is declared without an authentication rule: anyone who can reach "
            "the service can call it.",
            'Give the route its rule in the decorator: `dependencies=requires("<role>")`, '
            "or `signed_by(...)` for a provider callback that checks its own signature "
            "(fusion_prime.platform.auth; docs/auth.md).",
        ),
        Rule(
            "FP601",
            "subscription-without-dead-letter",
            Severity.MEDIUM,
            "A Pub/Sub subscription has no dead-letter policy: a poison message is "
            "redelivered forever and blocks or floods the consumer.",
            "Add a dead_letter_policy (dead-letter topic and max_delivery_attempts) and a "
            "retry_policy; for gcloud use --dead-letter-topic and --max-delivery-attempts.",
        ),
    )
}


@dataclass(frozen=True)
class Finding:
    rule: str
    path: str  # relative to the audited root, POSIX separators
    line: int
    message: str

    @property
    def severity(self) -> Severity:
        return RULES[self.rule].severity

    @property
    def fix(self) -> str:
        return RULES[self.rule].fix

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["severity"] = self.severity.label
        data["name"] = RULES[self.rule].name
        data["fix"] = self.fix
        return data

    def sort_key(self) -> tuple[int, str, int, str]:
        return (-int(self.severity), self.path, self.line, self.rule)
