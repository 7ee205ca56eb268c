# The operator console (`fusion-prime serve console`, docs/console.md): a Cloud Run service
# with no database. It reads each service through that service's HTTP API (its run.app
# URL, as CONSOLE_<SERVICE>_URL) with its own viewer key, and signs its CSRF tokens with a
# generated session key. Inputs: var.console (generated.auto.tfvars.json). Cloud Build
# (deploy/cloudbuild/console.yaml) deploys the later revisions with the same settings.

locals {
  console_secrets = merge(var.console.secrets, var.console.provided_secrets)
}

resource "google_service_account" "console" {
  account_id   = var.console.account_id
  display_name = "Fusion Prime console (Cloud Run runtime)"
}

# CONSOLE_SESSION_KEY: HMAC key of the CSRF tokens (>= 32 characters); 64 alphanumerics.
resource "random_password" "console" {
  for_each = var.console.secrets
  length   = 64
  special  = false
  lifecycle {
    ignore_changes = [length, special]
  }
}

# Every console secret; CONSOLE_API_KEY has no version here: its value is a viewer key the
# services issue (`fusion-prime auth create-key --role viewer`), added by the operator
# with `gcloud secrets versions add fp-console-console-api-key --data-file=-`.
resource "google_secret_manager_secret" "console" {
  for_each  = local.console_secrets
  secret_id = each.value
  labels    = { app = "fusion-prime", service = "console" }
  replication {
    auto {}
  }
  depends_on = [google_project_service.api]
}

resource "google_secret_manager_secret_version" "console" {
  for_each    = var.console.secrets
  secret      = google_secret_manager_secret.console[each.key].id
  secret_data = random_password.console[each.key].result
}

resource "google_secret_manager_secret_iam_member" "console" {
  for_each  = local.console_secrets
  secret_id = google_secret_manager_secret.console[each.key].secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = google_service_account.console.member
}

resource "google_cloud_run_v2_service" "console" {
  count               = var.image == null ? 0 : 1
  name                = "console"
  location            = var.region
  ingress             = "INGRESS_TRAFFIC_ALL" # IAM-authenticated: no allUsers invoker
  deletion_protection = var.deletion_protection

  template {
    service_account = google_service_account.console.email

    scaling {
      # no background work: it renders pages on request only
      min_instance_count = 0
      max_instance_count = 3
    }

    containers {
      image = var.image
      args  = ["serve", "console", "--host", "0.0.0.0", "--port", "8080"]

      ports {
        container_port = 8080
      }
      env {
        name  = "FP_ENV"
        value = "production"
      }
      # the session cookie is sent over https only
      env {
        name  = "CONSOLE_COOKIE_SECURE"
        value = "true"
      }
      # the services are private: a Google ID token per service (audience: its URL) in
      # X-Serverless-Authorization, from the metadata server (console/idtokens.py)
      env {
        name  = "CONSOLE_SERVERLESS_AUTH"
        value = "true"
      }
      dynamic "env" {
        for_each = var.console.service_urls
        content {
          name  = env.key
          value = google_cloud_run_v2_service.service[env.value].uri
        }
      }
      dynamic "env" {
        for_each = local.console_secrets
        content {
          name = env.key
          value_source {
            secret_key_ref {
              secret  = google_secret_manager_secret.console[env.key].secret_id
              version = "latest"
            }
          }
        }
      }
      startup_probe {
        http_get {
          path = "/health/ready"
        }
        period_seconds    = 5
        timeout_seconds   = 3
        failure_threshold = 24
      }
      liveness_probe {
        http_get {
          path = "/health/live"
        }
        period_seconds = 30
      }
    }
  }

  lifecycle {
    ignore_changes = [template, traffic, client, client_version]
  }

  depends_on = [
    google_secret_manager_secret_iam_member.console,
    google_secret_manager_secret_version.console,
  ]
}

locals {
  console_invoker_members = var.image == null ? {} : merge(
    { "deployer" = google_service_account.deployer.member },
    { for m in var.console_invokers : m => m },
  )
}

# Who may open the console: the deployer (the check step) and var.console_invokers.
resource "google_cloud_run_v2_service_iam_member" "console_invoker" {
  for_each = local.console_invoker_members
  name     = google_cloud_run_v2_service.console[0].name
  location = var.region
  role     = "roles/run.invoker"
  member   = each.value
}

# The console calls every service it reads (their IAM check; the service then checks the
# console's viewer key).
resource "google_cloud_run_v2_service_iam_member" "console_reads" {
  for_each = { for env_name, svc in var.console.service_urls : svc => svc if contains(keys(local.run_services), svc) }
  name     = google_cloud_run_v2_service.service[each.key].name
  location = var.region
  role     = "roles/run.invoker"
  member   = google_service_account.console.member
}

resource "google_service_account_iam_member" "deployer_act_as_console" {
  service_account_id = google_service_account.console.name
  role               = "roles/iam.serviceAccountUser"
  member             = google_service_account.deployer.member
}

resource "google_cloudbuild_trigger" "console" {
  count           = var.github_repository == null ? 0 : 1
  name            = "fp-deploy-console"
  description     = "Build, deploy without traffic, check and promote the console."
  filename        = "deploy/cloudbuild/console.yaml"
  service_account = google_service_account.deployer.id
  included_files = [
    "src/**",
    "pyproject.toml",
    "requirements.lock",
    "deploy/Dockerfile",
    "deploy/cloudbuild/console.yaml",
  ]

  github {
    owner = var.github_repository.owner
    name  = var.github_repository.name
    push {
      branch = "^${var.github_repository.branch}$"
    }
  }

  depends_on = [google_project_service.api]
}
