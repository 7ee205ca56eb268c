# One Cloud SQL for PostgreSQL instance, database and user per service; the connection
# string goes to Secret Manager in the Cloud SQL socket form the services accept:
# postgresql://USER:PASSWORD@/DB?host=/cloudsql/PROJECT:REGION:INSTANCE

resource "google_sql_database_instance" "db" {
  #checkov:skip=CKV_GCP_60:Public IP with no authorized networks: reachable only through the Cloud SQL connector (IAM cloudsql.client + TLS) that Cloud Run uses; private IP needs a VPC the project does not have.
  for_each            = toset(var.databases)
  name                = "fp-${each.key}-db"
  database_version    = var.postgres_version
  region              = var.region
  deletion_protection = var.deletion_protection

  settings {
    tier              = var.db_tier
    availability_type = "REGIONAL"
    disk_autoresize   = true
    user_labels       = { app = "fusion-prime", service = each.key }

    backup_configuration {
      enabled                        = true
      point_in_time_recovery_enabled = true
      start_time                     = "03:00"
      backup_retention_settings {
        retained_backups = 14
      }
    }

    ip_configuration {
      ipv4_enabled = true
      ssl_mode     = "TRUSTED_CLIENT_CERTIFICATE_REQUIRED"
    }

    insights_config {
      query_insights_enabled = true
    }

    database_flags {
      name  = "cloudsql.enable_pgaudit"
      value = "on"
    }
    database_flags {
      name  = "log_checkpoints"
      value = "on"
    }
    database_flags {
      name  = "log_connections"
      value = "on"
    }
    database_flags {
      name  = "log_disconnections"
      value = "on"
    }
    database_flags {
      name  = "log_lock_waits"
      value = "on"
    }
    database_flags {
      name  = "log_min_messages"
      value = "error"
    }
    database_flags {
      name  = "log_min_error_statement"
      value = "error"
    }
    database_flags {
      name  = "log_temp_files"
      value = "0"
    }
    database_flags {
      name  = "log_min_duration_statement"
      value = "-1"
    }
    database_flags {
      name  = "log_hostname"
      value = "on"
    }
    database_flags {
      name  = "log_duration"
      value = "on"
    }
    database_flags {
      name  = "log_statement"
      value = "ddl"
    }
  }

  depends_on = [google_project_service.api]
}

resource "google_sql_database" "db" {
  for_each = toset(var.databases)
  name     = "fp_${each.key}"
  instance = google_sql_database_instance.db[each.key].name
}

resource "random_password" "db" {
  for_each = toset(var.databases)
  length   = 40
  special  = false # the password goes into a URL unescaped
}

resource "google_sql_user" "db" {
  for_each = toset(var.databases)
  name     = "fp_${each.key}"
  instance = google_sql_database_instance.db[each.key].name
  password = random_password.db[each.key].result
}

resource "google_secret_manager_secret" "db_url" {
  for_each  = toset(var.databases)
  secret_id = "fp-${each.key}-db-connection-string"
  labels    = { app = "fusion-prime", service = each.key }
  replication {
    auto {}
  }
  depends_on = [google_project_service.api]
}

resource "google_secret_manager_secret_version" "db_url" {
  for_each    = toset(var.databases)
  secret      = google_secret_manager_secret.db_url[each.key].id
  secret_data = "postgresql://${google_sql_user.db[each.key].name}:${random_password.db[each.key].result}@/${google_sql_database.db[each.key].name}?host=/cloudsql/${google_sql_database_instance.db[each.key].connection_name}"
}
