# The Cloud Run services. Terraform creates each one (first revision from var.image) and
# owns its identity and access; Cloud Build (deploy/cloudbuild/<service>.yaml) deploys the
# later revisions with the same secrets, environment and Cloud SQL instance (both come
# from the same generator), so the template is ignored after creation.

resource "google_cloud_run_v2_service" "service" {
  for_each            = local.run_services
  name                = each.key
  location            = var.region
  ingress             = "INGRESS_TRAFFIC_ALL" # IAM-authenticated: no allUsers invoker
  deletion_protection = var.deletion_protection
  # push tokens carry this audience (not the run.app URL, which the env cannot name)
  custom_audiences = each.value.push_audience == null ? null : [each.value.push_audience]

  template {
    service_account = google_service_account.run[each.key].email

    scaling {
      # events arrive by push; one warm instance keeps the outbox relay and the
      # background workers running between requests
      min_instance_count = length(each.value.publishes) + length(each.value.consumes) > 0 ? 1 : 0
      max_instance_count = 10
    }

    containers {
      image = var.image
      args  = ["serve", each.key, "--host", "0.0.0.0", "--port", "8080"]

      ports {
        container_port = 8080
      }
      resources {
        # the outbox relay and background workers need CPU between requests
        cpu_idle = length(each.value.publishes) + length(each.value.consumes) == 0
      }
      env {
        name  = "FP_ENV"
        value = "production"
      }
      env {
        name  = "FP_BUS"
        value = "pubsub"
      }
      env {
        name  = "GCP_PROJECT"
        value = var.project_id
      }
      # a consuming service authenticates Pub/Sub push requests (pubsub.tf): the token's
      # audience and the email of its push account (iam.tf, fp-<db_slug>-push)
      dynamic "env" {
        for_each = {
          for k, v in {
            FP_PUSH_AUDIENCE        = each.value.push_audience
            FP_PUSH_SERVICE_ACCOUNT = "fp-${each.value.db_slug}-push@${var.project_id}.iam.gserviceaccount.com"
          } : k => v if length(each.value.consumes) > 0
        }
        content {
          name  = env.key
          value = env.value
        }
      }
      env {
        name = "DATABASE_URL"
        value_source {
          secret_key_ref {
            secret  = google_secret_manager_secret.db_url[each.value.db_slug].secret_id
            version = "latest"
          }
        }
      }
      # required secrets of the service (secrets.tf), one Secret Manager secret each
      dynamic "env" {
        for_each = each.value.secrets
        content {
          name = env.key
          value_source {
            secret_key_ref {
              secret  = google_secret_manager_secret.service[env.value].secret_id
              version = "latest"
            }
          }
        }
      }
      # provider credentials (secrets.tf: values added by the operator)
      dynamic "env" {
        for_each = each.value.provider_secrets
        content {
          name = env.key
          value_source {
            secret_key_ref {
              secret  = google_secret_manager_secret.provider[env.value].secret_id
              version = "latest"
            }
          }
        }
      }
      volume_mounts {
        name       = "cloudsql"
        mount_path = "/cloudsql"
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

    volumes {
      name = "cloudsql"
      cloud_sql_instance {
        instances = [google_sql_database_instance.db[each.value.db_slug].connection_name]
      }
    }
  }

  lifecycle {
    ignore_changes = [template, traffic, client, client_version]
  }

  depends_on = [
    google_secret_manager_secret_iam_member.db_url,
    google_secret_manager_secret_version.db_url,
    google_secret_manager_secret_iam_member.service,
    google_secret_manager_secret_version.service,
    google_secret_manager_secret_iam_member.provider,
    google_project_iam_member.cloudsql_client,
  ]
}

locals {
  invoker_members = merge(
    { for svc, _ in local.run_services : "${svc}/deployer" => { service = svc, member = google_service_account.deployer.member } },
    { for svc, _ in local.run_services : "${svc}/uptime" => { service = svc, member = local.monitoring_agent } },
    { for svc, s in local.run_services : "${svc}/push" => { service = svc, member = google_service_account.push[svc].member } if length(s.consumes) > 0 },
    merge([
      for svc, members in var.invokers : {
        for m in members : "${svc}/${m}" => { service = svc, member = m }
      } if contains(keys(local.run_services), svc)
    ]...),
  )
}

# Callers: the deployer (the verify step), uptime checks, the service's own Pub/Sub push
# account, and var.invokers.
resource "google_cloud_run_v2_service_iam_member" "invoker" {
  for_each = local.invoker_members
  name     = google_cloud_run_v2_service.service[each.value.service].name
  location = var.region
  role     = "roles/run.invoker"
  member   = each.value.member
}
