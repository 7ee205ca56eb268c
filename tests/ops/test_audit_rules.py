"""Each audit rule on a tree that breaks it (positive) and one that does not (negative)."""

from __future__ import annotations

from tests.ops.conftest import AuditTree, rules_of

# -- shared pieces ------------------------------------------------------------------------

CODE_READS_DB = """
import os

def engine_url() -> str:
    return os.environ["DATABASE_URL"]
"""


def deploy(name: str, *flags: str) -> str:
    """A Cloud Build file whose last step is `gcloud run deploy NAME FLAGS...`."""
    args = "\n".join(
        f"      - '{f}'" for f in ("run", "deploy", name, "--region", "us-central1", *flags)
    )
    return f"""
steps:
  - name: gcr.io/cloud-builders/docker
    args: ['build', '-t', 'img', '.']
  - name: gcr.io/cloud-builders/gcloud
    args:
{args}
"""


DB_FLAGS = (
    "--set-secrets",
    "DATABASE_URL=fp-ledger-db-connection-string:latest",
    "--add-cloudsql-instances",
    "proj:us-central1:fp-ledger-db",
)


# -- FP101 / FP102 / FP103: code reads a database, deploy must wire it ----------------------


def test_fp101_code_reads_database_but_deploy_sets_no_url(audit_tree: AuditTree) -> None:
    bad = audit_tree(
        {
            "services/ledger/cloudbuild.yaml": deploy("ledger", "--set-env-vars", "A=1"),
            "services/ledger/app/db.py": CODE_READS_DB,
        }
    )
    assert rules_of(bad) == ["FP101", "FP103"]
    fp101 = next(f for f in bad if f.rule == "FP101")
    assert fp101.path == "services/ledger/cloudbuild.yaml"
    assert fp101.line == 8  # the line naming the service
    assert "services/ledger/" in fp101.message

    good = audit_tree(
        {
            "services/ledger/cloudbuild.yaml": deploy("ledger", *DB_FLAGS),
            "services/ledger/app/db.py": CODE_READS_DB,
        }
    )
    assert good == []


def test_fp101_not_raised_for_a_service_without_database_code(audit_tree: AuditTree) -> None:
    findings = audit_tree(
        {
            "services/static/cloudbuild.yaml": deploy("static"),
            "services/static/app/main.py": "def hello() -> str:\n    return 'hi'\n",
        }
    )
    assert findings == []


def test_fp101_follows_serve_args_to_the_service_spec(audit_tree: AuditTree) -> None:
    spec = """
    from fusion_prime.platform.spec import ServiceSpec
    SPEC = ServiceSpec(name="ledger", db_slug="ledger", default_port=1, migrations_dir=None)
    """
    bad = audit_tree(
        {
            "deploy/cloudbuild/ledger.yaml": deploy("ledger", "--args=serve,ledger"),
            "src/pkg/ledger/spec.py": spec,
        }
    )
    assert rules_of(bad) == ["FP101", "FP103"]
    assert "ServiceSpec 'ledger'" in bad[0].message
    good = audit_tree(
        {
            "deploy/cloudbuild/ledger.yaml": deploy("ledger", "--args=serve,ledger", *DB_FLAGS),
            "src/pkg/ledger/spec.py": spec,
        }
    )
    assert good == []


def test_fp102_database_url_as_plain_env_var(audit_tree: AuditTree) -> None:
    plain = "DATABASE_URL=postgresql://ledger@/ledger?host=/cloudsql/p:r:fp-ledger-db"
    bad = audit_tree(
        {
            "services/ledger/cloudbuild.yaml": deploy(
                "ledger", "--set-env-vars", f"^;^{plain};B=2", "--add-cloudsql-instances", "p:r:i"
            ),
            "services/ledger/app/db.py": CODE_READS_DB,
        }
    )
    assert rules_of(bad) == ["FP102"]
    good = audit_tree(
        {
            "services/ledger/cloudbuild.yaml": deploy("ledger", "--set-env-vars", "B=2", *DB_FLAGS),
            "services/ledger/app/db.py": CODE_READS_DB,
        }
    )
    assert good == []


def test_fp103_secret_without_cloudsql_instance_in_a_bash_step(audit_tree: AuditTree) -> None:
    def build(extra: str) -> str:
        return f"""
        steps:
          - name: gcr.io/google.com/cloudsdktool/cloud-sdk
            entrypoint: bash
            args:
              - -c
              - |
                gcloud run deploy ledger --region us-central1 \\
                  --set-secrets DATABASE_URL=fp-ledger-db-connection-string:latest {extra}
        """

    bad = audit_tree({"services/ledger/cloudbuild.yaml": build("")})
    assert rules_of(bad) == ["FP103"]
    assert bad[0].line == 7  # the gcloud line inside the block scalar
    good = audit_tree(
        {"services/ledger/cloudbuild.yaml": build("--add-cloudsql-instances p:r:fp-ledger-db")}
    )
    assert good == []


def test_fp103_terraform_cloud_run_without_cloudsql_volume(audit_tree: AuditTree) -> None:
    def tf(volume: str) -> str:
        return f"""
        resource "google_cloud_run_v2_service" "ledger" {{
          name     = "ledger"
          location = "us-central1"
          template {{
            containers {{
              image = "img"
              env {{
                name = "DATABASE_URL"
                value_source {{
                  secret_key_ref {{
                    secret  = google_secret_manager_secret.ledger.secret_id
                    version = "latest"
                  }}
                }}
              }}
            }}
            {volume}
          }}
        }}
        """

    bad = audit_tree({"infra/run.tf": tf("")})
    assert rules_of(bad) == ["FP103"]
    assert bad[0].line == 1
    volume = 'volumes {\n name = "cloudsql"\n cloud_sql_instance {\n instances = ["p:r:i"]\n }\n }'
    assert audit_tree({"infra/run.tf": tf(volume)}) == []


def test_fp101_fp103_in_a_cloud_run_service_manifest(audit_tree: AuditTree) -> None:
    def manifest(env: str, annotations: str) -> str:
        return f"""
        apiVersion: serving.knative.dev/v1
        kind: Service
        metadata:
          name: ledger
        spec:
          template:
            metadata:
              annotations:
                autoscaling.knative.dev/maxScale: '10'{annotations}
            spec:
              containers:
                - image: img
                  env:
                    - name: GCP_PROJECT
                      value: p{env}
        """

    bad = audit_tree(
        {"services/ledger/service.yaml": manifest("", ""), "services/ledger/db.py": CODE_READS_DB}
    )
    assert rules_of(bad) == ["FP101", "FP103"]
    assert bad[0].line == 4
    secret = """
                    - name: DATABASE_URL
                      valueFrom:
                        secretKeyRef:
                          name: fp-ledger-db-connection-string
                          key: latest"""
    sql = "\n                run.googleapis.com/cloudsql-instances: p:r:fp-ledger-db"
    good = audit_tree(
        {
            "services/ledger/service.yaml": manifest(secret, sql),
            "services/ledger/db.py": CODE_READS_DB,
        }
    )
    assert good == []


# -- FP104: secrets/settings the code requires must come from the deploy --------------------

SPEC_WITH_SECRET = """
from fusion_prime.platform.spec import ServiceSpec
from pkg.ledger.settings import LedgerSettings
SPEC = ServiceSpec(
    name="ledger",
    db_slug="ledger",
    default_port=1,
    migrations_dir=None,
    settings_cls=LedgerSettings,
    required_secrets=("LEDGER_SIGNING_KEY",),
)
"""
SETTINGS = """
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings

class CommonSettings(BaseSettings):
    region: str
    timeout: float = 3.0

class LedgerSettings(CommonSettings):
    api_token: SecretStr = Field(alias="LEDGER_API_TOKEN")
    retries: int = Field(default=3, alias="LEDGER_RETRIES")
    hook: str = Field(default_factory=str, alias="LEDGER_HOOK")
    database_url: str = Field(alias="DATABASE_URL")
"""
LEDGER_SECRETS = (
    "--set-secrets=LEDGER_SIGNING_KEY=fp-ledger-ledger-signing-key:latest,"
    "LEDGER_API_TOKEN=fp-ledger-ledger-api-token:latest"
)


def test_fp104_required_secret_or_setting_not_provided(audit_tree: AuditTree) -> None:
    code = {"src/pkg/ledger/spec.py": SPEC_WITH_SECRET, "src/pkg/ledger/settings.py": SETTINGS}
    bad = audit_tree(
        {
            # neither the spec's secret, nor the settings' secret, nor the inherited setting
            "deploy/cloudbuild/ledger.yaml": deploy("ledger", "--args=serve,ledger", *DB_FLAGS),
            **code,
        }
    )
    assert rules_of(bad) == ["FP104", "FP104", "FP104"]
    messages = " | ".join(f.message for f in bad)
    for what in (
        "the secret LEDGER_SIGNING_KEY",  # ServiceSpec.required_secrets
        "the secret LEDGER_API_TOKEN",  # SecretStr field without a default
        "the setting (no default) REGION",  # inherited field, env name = field name
    ):
        assert what in messages
    assert all(f.path == "deploy/cloudbuild/ledger.yaml" and f.line == 8 for f in bad)
    # the secret set as a plain environment variable is flagged as such
    plain = audit_tree(
        {
            "deploy/cloudbuild/ledger.yaml": deploy(
                "ledger",
                "--args=serve,ledger",
                *DB_FLAGS,
                "--set-env-vars=region=eu,LEDGER_SIGNING_KEY=changeme",
                "--update-secrets=LEDGER_API_TOKEN=fp-ledger-ledger-api-token:latest",
            ),
            **code,
        }
    )
    assert rules_of(plain) == ["FP104"]
    assert "LEDGER_SIGNING_KEY" in plain[0].message
    assert "plain environment" in plain[0].message


def test_fp104_every_requirement_provided(audit_tree: AuditTree) -> None:
    code = {"src/pkg/ledger/spec.py": SPEC_WITH_SECRET, "src/pkg/ledger/settings.py": SETTINGS}
    good = audit_tree(
        {
            "deploy/cloudbuild/ledger.yaml": deploy(
                "ledger",
                "--args=serve,ledger",
                *DB_FLAGS,
                LEDGER_SECRETS,
                "--set-env-vars=REGION=eu",  # a non-secret setting may be plain
            ),
            **code,
        }
    )
    assert good == []
    # a job with its environment in a file cannot be checked here: no guess
    env_file = audit_tree(
        {
            "deploy/cloudbuild/ledger.yaml": deploy(
                "ledger", "--args=serve,ledger", *DB_FLAGS, "--env-vars-file=env.yaml"
            ),
            **code,
        }
    )
    assert env_file == []


def test_fp104_in_the_incident_layout(audit_tree: AuditTree) -> None:
    settings = """
    from pydantic import SecretStr
    from pydantic_settings import BaseSettings

    class Settings(BaseSettings):
        webhook_secret: SecretStr
    """
    bad = audit_tree(
        {
            "services/hooks/cloudbuild.yaml": deploy("hooks"),
            "services/hooks/app/settings.py": settings,
        }
    )
    assert rules_of(bad) == ["FP104"]
    assert "WEBHOOK_SECRET" in bad[0].message
    good = audit_tree(
        {
            "services/hooks/cloudbuild.yaml": deploy(
                "hooks", "--set-secrets=WEBHOOK_SECRET=fp-hooks-webhook-secret:1"
            ),
            "services/hooks/app/settings.py": settings,
        }
    )
    assert good == []


# -- FP201 / FP202: defaults and fallbacks in code -----------------------------------------


def test_fp201_defaults_of_every_shape(audit_tree: AuditTree) -> None:
    bad = audit_tree(
        {
            "app/a.py": 'import os\nURL = os.environ.get("DATABASE_URL", "sqlite:///./a.db")\n',
            "app/b.py": 'import os\nURL = os.getenv("DATABASE_URL", "")\n',
            "app/c.py": 'import os\nURL = os.getenv("RISK_DB_URL") or "postgresql://localhost/x"\n',
            "app/d.py": """
            from pydantic import Field
            from pydantic_settings import BaseSettings

            class Settings(BaseSettings):
                database_url: str = Field(default="sqlite:///x.db", alias="DATABASE_URL")
            """,
            "app/e.py": """
            from pydantic_settings import BaseSettings

            class Settings(BaseSettings):
                database_url: str = "postgresql://localhost:5432/app"
            """,
            "app/f.py": """
            from os import environ
            URL = environ.get("SQLALCHEMY_DATABASE_URI", "x")
            """,
            "app/g.py": 'import os\nos.environ.setdefault("DATABASE_URL", "sqlite://")\n',
        }
    )
    assert rules_of(bad) == ["FP201"] * 7
    messages = {f.path: f.message for f in bad}
    assert "SQLite" in messages["app/a.py"]
    assert "empty string" in messages["app/b.py"]
    assert "localhost" in messages["app/c.py"]


def test_fp201_no_default_is_fine(audit_tree: AuditTree) -> None:
    good = audit_tree(
        {
            "app/a.py": """
            import os
            URL = os.environ["DATABASE_URL"]
            X = os.getenv("DATABASE_URL")
            """,
            "app/b.py": """
            from pydantic import Field
            from pydantic_settings import BaseSettings

            class Settings(BaseSettings):
                database_url: str | None = Field(default=None, alias="DATABASE_URL")
                other: str = Field(default="x", alias="LOG_LEVEL")
            """,
            "app/c.py": 'import os\nLEVEL = os.environ.get("LOG_LEVEL", "INFO")\n',
        }
    )
    assert good == []


def test_fp201_message_never_repeats_the_password(audit_tree: AuditTree) -> None:
    """A report (SARIF goes to code scanning) must not copy the credential it points at."""
    bad = audit_tree(
        {
            "app/a.py": (
                "import os\n"
                'URL = os.environ.get("DATABASE_URL", "postgresql://app:hunter22@db/app")\n'
            ),
        }
    )
    assert rules_of(bad) == ["FP201", "FP301"]
    fp201 = next(f for f in bad if f.rule == "FP201")
    assert "postgresql://app:***@db" in fp201.message
    assert all("hunter22" not in f.message for f in bad)


def test_fp202_switch_to_mock_or_memory_store(audit_tree: AuditTree) -> None:
    bad = audit_tree(
        {
            "app/risk.py": """
            import os

            def calculator():
                database_url = os.getenv("DATABASE_URL")
                use_production = database_url and "postgresql" in database_url.lower()
                if not use_production:
                    return MockRiskCalculator()
                return RiskCalculator(database_url)
            """,
            "app/store.py": """
            def make(settings):
                return PgStore(settings.database_url) if settings.database_url else InMemoryStore()
            """,
            "app/engine.py": """
            import os

            def engine():
                if not os.environ.get("DATABASE_URL"):
                    return create_engine("sqlite:///:memory:")
                return create_engine(os.environ["DATABASE_URL"])
            """,
            "app/try.py": """
            import os

            try:
                ENGINE = create_engine(os.environ["DATABASE_URL"])
            except KeyError:
                ENGINE = create_engine("sqlite+aiosqlite:///./local.db")
            """,
        }
    )
    assert rules_of(bad) == ["FP202"] * 4
    risk = next(f for f in bad if f.path == "app/risk.py")
    assert risk.line == 7
    assert "MockRiskCalculator" in risk.message


def test_fp202_refusing_is_not_a_fallback(audit_tree: AuditTree) -> None:
    good = audit_tree(
        {
            "app/risk.py": """
            import os

            def calculator(debug: bool):
                database_url = os.getenv("DATABASE_URL")
                if not database_url:
                    raise SystemExit("DATABASE_URL is not set")
                if "sqlite" in database_url:
                    raise SystemExit("sqlite is not supported")
                if debug:
                    return MockClock()  # unrelated to the database URL
                return RiskCalculator(database_url)
            """
        }
    )
    assert good == []


# -- FP301: credentials ---------------------------------------------------------------------


def test_fp301_credentials_in_env_vars_and_files(audit_tree: AuditTree) -> None:
    key = "0x4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318"
    bad = audit_tree(
        {
            "svc/cloudbuild.yaml": deploy(
                "svc",
                "--set-env-vars",
                "ETH_RPC_URL=https://mainnet.infura.io/v3/9aa3d95b3bc440fa88ea12eaa4456161",
            ),
            "svc/config.py": f"""
            SIGNER_PRIVATE_KEY = "{key}"
            HEADERS = {{"api_key": "sk_live_4f9a8b7c6d5e"}}
            """,
            "svc/.env": "DB_PASSWORD=hunter22-real\n",
            "svc/app.yaml": "env:\n  DATABASE_URL: postgresql://fp:Sup3rS3cret@10.0.0.3/fp\n",
            "svc/pem.py": "K = '''-----BEGIN RSA PRIVATE KEY-----\\nMIIB\\n"
            "-----END RSA PRIVATE KEY-----'''\n",
            "infra/run.tf": 'resource "x" "y" {\n  api_token = "tok_abcdef123456"\n}\n',
        }
    )
    assert rules_of(bad) == ["FP301"] * 7
    reasons = " | ".join(f.message for f in bad)
    assert "RPC URL" in reasons
    assert "private key" in reasons
    assert "password inside a connection URL" in reasons


def test_fp301_placeholders_secret_refs_and_tests_are_fine(audit_tree: AuditTree) -> None:
    good = audit_tree(
        {
            "svc/cloudbuild.yaml": deploy(
                "svc", "--set-secrets", "ETH_RPC_URL=fp-eth-rpc-url:latest", "--set-env-vars", "A=1"
            ),
            "svc/config.py": """
            EXAMPLE = "postgresql://USER:PASSWORD@HOST:5432/DB"
            TEMPLATE = "postgresql://${DB_USER}:${DB_PASSWORD}@/db"
            RPC = "https://eth-sepolia.g.alchemy.com/v2/"
            """,
            "svc/.env.example": "DB_PASSWORD=<from secret manager>\n",
            "tests/test_redaction.py": 'URL = "postgresql://fp:s3cr3t@db/x"\n',
        }
    )
    assert good == []


# -- FP401: shared database ---------------------------------------------------------------


def test_fp401_two_services_one_database(audit_tree: AuditTree) -> None:
    risk = deploy(
        "risk",
        "--set-secrets",
        "DATABASE_URL=fp-risk-db-connection-string:latest",
        "--add-cloudsql-instances",
        "p:r:fp-risk-db",
    )
    alerts = deploy(
        "alerts",
        "--set-secrets",
        "DATABASE_URL=fp-risk-db-connection-string:latest",
        "--add-cloudsql-instances",
        "p:r:fp-risk-db",
    )
    bad = audit_tree({"deploy/risk.yaml": risk, "deploy/alerts.yaml": alerts})
    assert rules_of(bad) == ["FP401", "FP401"]  # the secret and the instance
    assert {f.path for f in bad} == {"deploy/risk.yaml"}  # the later one (sorted by path)


def test_fp401_migration_job_shares_with_its_own_service(audit_tree: AuditTree) -> None:
    job = """
    steps:
      - name: gcr.io/cloud-builders/gcloud
        args: ['run', 'jobs', 'deploy', 'ledger-migrate', '--args=migrate,ledger',
               '--set-secrets=DATABASE_URL=fp-ledger-db-connection-string:latest',
               '--set-cloudsql-instances=p:r:fp-ledger-db']
      - name: gcr.io/cloud-builders/gcloud
        args: ['run', 'deploy', 'ledger', '--args=serve,ledger',
               '--set-secrets=DATABASE_URL=fp-ledger-db-connection-string:latest',
               '--add-cloudsql-instances=p:r:fp-ledger-db']
      - name: gcr.io/cloud-builders/gcloud
        args: ['run', 'deploy', 'other', '--args=serve,other',
               '--set-secrets=DATABASE_URL=fp-other-db-connection-string:latest',
               '--add-cloudsql-instances=p:r:fp-other-db']
    """
    assert audit_tree({"deploy/all.yaml": job}) == []


# -- FP501: public without authentication --------------------------------------------------


def test_fp501_public_service_without_auth(audit_tree: AuditTree) -> None:
    app = "from fastapi import FastAPI\napp = FastAPI()\n"
    bad = audit_tree(
        {
            "services/web/cloudbuild.yaml": deploy("web", "--allow-unauthenticated"),
            "services/web/main.py": app,
        }
    )
    assert rules_of(bad) == ["FP501"]
    assert bad[0].line == 11  # the --allow-unauthenticated line
    tf = """
    resource "google_cloud_run_v2_service" "web" {
      name     = "web"
      location = "us-central1"
    }
    resource "google_cloud_run_v2_service_iam_member" "public" {
      name   = google_cloud_run_v2_service.web.name
      role   = "roles/run.invoker"
      member = "allUsers"
    }
    """
    assert rules_of(audit_tree({"infra/web.tf": tf})) == ["FP501"]


def test_fp501_public_service_with_its_own_auth_or_private(audit_tree: AuditTree) -> None:
    authed = """
    from fastapi import Depends, FastAPI
    from fastapi.security import HTTPBearer

    bearer = HTTPBearer()
    app = FastAPI(dependencies=[Depends(bearer)])
    """
    assert (
        audit_tree(
            {
                "services/web/cloudbuild.yaml": deploy("web", "--allow-unauthenticated"),
                "services/web/main.py": authed,
            }
        )
        == []
    )
    private = deploy("web", "--no-allow-unauthenticated")
    assert (
        audit_tree({"services/web/cloudbuild.yaml": private, "services/web/x.py": "X = 1\n"}) == []
    )


# -- FP601: dead letters ---------------------------------------------------------------------


def test_fp601_subscriptions_without_dead_letter(audit_tree: AuditTree) -> None:
    bad = audit_tree(
        {
            "infra/pubsub.tf": """
            resource "google_pubsub_subscription" "orders" {
              name  = "orders"
              topic = google_pubsub_topic.orders.id
            }
            """,
            "scripts/setup.sh": "gcloud pubsub subscriptions create a --topic=t\n",
            "app/setup.py": """
            def setup(client):
                client.create_subscription(request={"name": "s", "topic": "t"})
            """,
        }
    )
    assert rules_of(bad) == ["FP601"] * 3


def test_fp601_dead_letter_policies_and_the_hold_subscription(audit_tree: AuditTree) -> None:
    good = audit_tree(
        {
            "infra/pubsub.tf": """
            resource "google_pubsub_subscription" "orders" {
              name  = "orders"
              topic = google_pubsub_topic.orders.id
              dead_letter_policy {
                dead_letter_topic     = google_pubsub_topic.orders_dead.id
                max_delivery_attempts = 5
              }
            }
            resource "google_pubsub_subscription" "orders_hold" {
              name  = "orders-dead-letter-hold"
              topic = google_pubsub_topic.orders_dead.id
            }
            """,
            "scripts/setup.sh": "gcloud pubsub subscriptions create a --topic=t "
            "--dead-letter-topic=t-dl --max-delivery-attempts=5\n",
            "app/setup.py": """
            def setup(client):
                client.create_subscription(
                    request={
                        "name": "s",
                        "topic": "t",
                        "dead_letter_policy": {"dead_letter_topic": "d"},
                    }
                )
            """,
        }
    )
    assert good == []


# -- FP502: every route has an authentication rule ------------------------------------------


def test_fp502_route_without_auth_rule(audit_tree: AuditTree) -> None:
    code = """
    from fastapi import APIRouter
    from fusion_prime.platform.auth import requires, signed_by

    router = APIRouter()

    @router.get("/health/live")
    async def live() -> dict: ...

    @router.get("/items/{item_id}", dependencies=requires("viewer"))
    async def item(item_id: str) -> dict: ...

    @router.post("/webhooks/provider", dependencies=signed_by("provider HMAC"))
    async def provider() -> dict: ...

    @router.post("/items", status_code=201)
    async def create() -> dict: ...

    @router.delete("/items/{item_id}", dependencies=[])
    async def delete(item_id: str) -> None: ...
    """
    findings = audit_tree({"services/shop/api.py": code})
    assert rules_of(findings) == ["FP502", "FP502"]
    assert [f.message for f in findings] == [
        "route POST /items has no authentication rule",
        "route DELETE /items/{item_id} has no authentication rule",
    ]
    assert [f.line for f in findings] == [15, 18]


def test_fp502_accepts_an_identity_parameter_and_a_declared_public_route(
    audit_tree: AuditTree,
) -> None:
    code = """
    from fastapi import FastAPI
    from fusion_prime.platform.auth import Caller, public_route

    app = FastAPI()

    @app.get("/me")
    async def me(caller: Caller) -> dict: ...

    @app.get("/page")
    async def page(request, user: CurrentUser) -> dict: ...

    @app.get("/login", dependencies=public_route("the sign-in page"))
    async def login() -> dict: ...

    @app.get("/open")
    async def open_page(request, user: str) -> dict: ...
    """
    findings = audit_tree({"services/console/app.py": code})
    assert [f.message for f in findings] == ["route GET /open has no authentication rule"]


def test_fp502_accepts_an_app_wide_dependency(audit_tree: AuditTree) -> None:
    code = """
    from fastapi import APIRouter, Depends, FastAPI

    app = FastAPI(dependencies=[Depends(require_api_key)])
    bare = APIRouter()

    @app.post("/kyc/check")
    async def check() -> dict: ...

    @bare.post("/kyc/approve")
    async def approve() -> dict: ...
    """
    findings = audit_tree({"services/kyc/main.py": code})
    assert [f.message for f in findings] == ["route POST /kyc/approve has no authentication rule"]
