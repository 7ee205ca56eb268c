variable "project_id" {
  description = "Google Cloud project that hosts Fusion Prime."
  type        = string
}

variable "region" {
  description = "Region of Cloud Run, Cloud SQL and Artifact Registry."
  type        = string
  default     = "us-central1"
}

variable "image" {
  description = "Image for the first creation of the Cloud Run services (Cloud Build deploys later revisions). Null: no Cloud Run service yet."
  type        = string
  default     = null
}

variable "postgres_version" {
  description = "Cloud SQL PostgreSQL major version."
  type        = string
  default     = "POSTGRES_18"
}

variable "db_tier" {
  description = "Cloud SQL machine tier of each service's instance."
  type        = string
  default     = "db-custom-1-3840"
}

variable "deletion_protection" {
  description = "Protect databases and services against terraform destroy."
  type        = bool
  default     = true
}

variable "alert_email" {
  description = "E-mail address that receives the database and readiness alerts (null: no channel)."
  type        = string
  default     = null
}

variable "invokers" {
  description = "Extra members allowed to call a service (service name -> IAM members), e.g. another service's account."
  type        = map(list(string))
  default     = {}
}

variable "external_consumers" {
  description = "IAM members of consumers outside this system allowed to pull their registry subscription (subscription name -> members), e.g. {\"settlement-signer\" = [\"serviceAccount:signer@PROJECT.iam.gserviceaccount.com\"]}. Only subscriptions the registry marks external are accepted."
  type        = map(list(string))
  default     = {}
}

variable "github_repository" {
  description = "GitHub repository (connected to Cloud Build) whose pushes to `branch` deploy; null: no triggers."
  type = object({
    owner  = string
    name   = string
    branch = string
  })
  default = null
}

# --- generated (generated.auto.tfvars.json) --------------------------------------------

variable "databases" {
  description = "db_slug of every service that owns a database: fp-<slug>-db, fp-<slug>-db-connection-string."
  type        = list(string)
}

variable "services" {
  description = "Shipped services: db_slug, published topics, consumed subscriptions, required secrets (env name -> secret id), provider credentials (the same, values added by the operator) and the OIDC audience of their push requests (null: no consumers)."
  type = map(object({
    db_slug   = string
    publishes = list(string)
    consumes  = list(string)
    secrets   = map(string)
    # credentials of outside providers (SMTP password, SMS token): env name -> secret id
    provider_secrets = map(string)
    push_audience    = string
  }))
}

variable "topics" {
  description = "The event registry: topic -> publisher and subscriptions (consumer service, delivery attempts, push path)."
  type = map(object({
    publisher = string
    subscriptions = map(object({
      service               = string
      max_delivery_attempts = number
      push_path             = string
      external              = bool
    }))
  }))
}

variable "console" {
  description = "The operator console (no database): its runtime account id, its generated secrets and the secrets the operator provides (env name -> secret id), and the env name of each service URL it reads (env name -> service)."
  type = object({
    account_id       = string
    secrets          = map(string)
    provided_secrets = map(string)
    service_urls     = map(string)
  })
}

variable "console_invokers" {
  description = "IAM members allowed to open the console (roles/run.invoker on it), e.g. [\"group:treasury-ops@example.com\"]; they reach it with `gcloud run services proxy console` (docs/deploy.md)."
  type        = list(string)
  default     = []
}
