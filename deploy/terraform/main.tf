# Fusion Prime on Google Cloud: one Cloud SQL for PostgreSQL instance per service, the
# connection strings in Secret Manager, Pub/Sub from the event registry, Cloud Run services,
# least-privilege service accounts and monitoring. The per-service and per-topic inputs come
# from generated.auto.tfvars.json (`fusion-prime deploy generate`); see docs/deploy.md.

terraform {
  required_version = ">= 1.5"
  required_providers {
    google = {
      source  = "hashicorp/google"
      version = "~> 6.0"
    }
    random = {
      source  = "hashicorp/random"
      version = "~> 3.6"
    }
  }
  # State holds the generated database passwords: keep it in a private, versioned bucket.
  backend "gcs" {}
}

provider "google" {
  project = var.project_id
  region  = var.region
}

data "google_project" "this" {}

locals {
  apis = [
    "artifactregistry.googleapis.com",
    "cloudbuild.googleapis.com",
    "iam.googleapis.com",
    "logging.googleapis.com",
    "monitoring.googleapis.com",
    "pubsub.googleapis.com",
    "run.googleapis.com",
    "secretmanager.googleapis.com",
    "sqladmin.googleapis.com",
  ]
  pubsub_agent     = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-pubsub.iam.gserviceaccount.com"
  monitoring_agent = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-monitoring-notification.iam.gserviceaccount.com"
  # Cloud Run services exist once an image has been pushed (docs/deploy.md, step 3).
  run_services = var.image == null ? {} : var.services
  # services that consume events: they get a push account and push subscriptions
  consumers = { for name, s in var.services : name => s if length(s.consumes) > 0 }
}

resource "google_project_service" "api" {
  for_each           = toset(local.apis)
  service            = each.key
  disable_on_destroy = false
}

resource "google_artifact_registry_repository" "images" {
  #checkov:skip=CKV_GCP_84:Images hold no customer data; Google-managed encryption is sufficient and avoids a KMS dependency for every pull.
  location      = var.region
  repository_id = "fusion-prime"
  format        = "DOCKER"
  description   = "The one Fusion Prime image; the service is chosen by its arguments."
  depends_on    = [google_project_service.api]
}
