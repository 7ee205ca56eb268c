# Phase 4 of the incident report, as code: alerts on database errors, readiness failures
# and any non-PostgreSQL database URL, and uptime checks on every service's /health/ready.

resource "google_monitoring_notification_channel" "email" {
  count        = var.alert_email == null ? 0 : 1
  display_name = "Fusion Prime on-call"
  type         = "email"
  labels       = { email_address = var.alert_email }
}

locals {
  channels = google_monitoring_notification_channel.email[*].id
  run_logs = "resource.type=(\"cloud_run_revision\" OR \"cloud_run_job\")"
}

# Readiness failures (a structured log line from /health/ready) and refused start-ups: the
# runner's one stderr line `fusion-prime SERVICE: refusing to start: ...` for a missing or
# non-PostgreSQL DATABASE_URL, an unreachable server or migrations behind the code.
resource "google_logging_metric" "database_errors" {
  name   = "fp_database_errors"
  filter = "${local.run_logs} AND (jsonPayload.event=\"readiness check failed\" OR textPayload:\"refusing to start\" OR textPayload:\"database did not answer\")"
  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "INT64"
    labels {
      key         = "service"
      value_type  = "STRING"
      description = "Cloud Run service or job"
    }
  }
  label_extractors = {
    service = "EXTRACT(resource.labels.service_name)"
  }
}

# The incident itself: a service that logs a database URL that is not PostgreSQL.
resource "google_logging_metric" "non_postgres_database" {
  name   = "fp_non_postgres_database"
  filter = "${local.run_logs} AND jsonPayload.event:\"Using database URL:\" AND NOT jsonPayload.event:\"Using database URL: postgresql\""
  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "INT64"
  }
}

resource "google_monitoring_alert_policy" "database_errors" {
  display_name          = "Fusion Prime: database errors or readiness failures"
  combiner              = "OR"
  notification_channels = local.channels
  conditions {
    display_name = "database errors in the last 5 minutes"
    condition_threshold {
      filter          = "metric.type=\"logging.googleapis.com/user/${google_logging_metric.database_errors.name}\" AND resource.type=(\"cloud_run_revision\" OR \"cloud_run_job\")"
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "0s"
      aggregations {
        alignment_period     = "300s"
        per_series_aligner   = "ALIGN_SUM"
        cross_series_reducer = "REDUCE_SUM"
        group_by_fields      = ["metric.label.service"]
      }
    }
  }
  documentation {
    content   = "A service could not use its database. `fusion-prime verify` the service URL; check its DATABASE_URL secret and Cloud SQL instance (docs/deploy.md)."
    mime_type = "text/markdown"
  }
}

resource "google_monitoring_alert_policy" "non_postgres_database" {
  display_name          = "Fusion Prime: a service uses a non-PostgreSQL database"
  combiner              = "OR"
  notification_channels = local.channels
  conditions {
    display_name = "non-PostgreSQL database URL logged"
    condition_threshold {
      filter          = "metric.type=\"logging.googleapis.com/user/${google_logging_metric.non_postgres_database.name}\" AND resource.type=(\"cloud_run_revision\" OR \"cloud_run_job\")"
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "0s"
      aggregations {
        alignment_period   = "60s"
        per_series_aligner = "ALIGN_SUM"
      }
    }
  }
  documentation {
    content   = "The incident's failure mode: data would not persist. Stop traffic to the revision and fix its DATABASE_URL."
    mime_type = "text/markdown"
  }
}

resource "google_monitoring_uptime_check_config" "ready" {
  for_each     = local.run_services
  display_name = "fp-${each.key}-ready"
  timeout      = "10s"
  period       = "60s"

  http_check {
    path         = "/health/ready"
    port         = 443
    use_ssl      = true
    validate_ssl = true
    accepted_response_status_codes {
      status_class = "STATUS_CLASS_2XX"
    }
    service_agent_authentication {
      type = "OIDC_TOKEN"
    }
  }

  content_matchers {
    content = "\"dialect\":\"postgresql\""
    matcher = "CONTAINS_STRING"
  }

  monitored_resource {
    type = "uptime_url"
    labels = {
      project_id = var.project_id
      host       = trimprefix(google_cloud_run_v2_service.service[each.key].uri, "https://")
    }
  }
}

resource "google_monitoring_alert_policy" "uptime" {
  count                 = length(local.run_services) > 0 ? 1 : 0
  display_name          = "Fusion Prime: /health/ready failing"
  combiner              = "OR"
  notification_channels = local.channels
  conditions {
    display_name = "uptime check on /health/ready failing"
    condition_threshold {
      filter          = "metric.type=\"monitoring.googleapis.com/uptime_check/check_passed\" AND resource.type=\"uptime_url\""
      comparison      = "COMPARISON_GT"
      threshold_value = 1
      duration        = "120s"
      aggregations {
        alignment_period     = "300s"
        per_series_aligner   = "ALIGN_NEXT_OLDER"
        cross_series_reducer = "REDUCE_COUNT_FALSE"
        group_by_fields      = ["metric.label.check_id"]
      }
    }
  }
}
