# Least privilege: one runtime service account per shipped service, allowed to read only
# its own secrets (connection string, required secrets in secrets.tf), to connect only to
# its own Cloud SQL instance and to publish only to the topics it publishes. It pulls
# nothing: its subscriptions are delivered by push (pubsub.tf).

resource "google_service_account" "run" {
  for_each     = var.services
  account_id   = "fp-${each.value.db_slug}-run"
  display_name = "Fusion Prime ${each.key} (Cloud Run runtime)"
}

resource "google_secret_manager_secret_iam_member" "db_url" {
  for_each  = var.services
  secret_id = google_secret_manager_secret.db_url[each.value.db_slug].secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = google_service_account.run[each.key].member
}

resource "google_project_iam_member" "cloudsql_client" {
  for_each = var.services
  project  = var.project_id
  role     = "roles/cloudsql.client"
  member   = google_service_account.run[each.key].member
  condition {
    title       = "own-instance-only"
    description = "Only the service's own Cloud SQL instance."
    expression  = "resource.name == \"projects/${var.project_id}/instances/fp-${each.value.db_slug}-db\""
  }
}

resource "google_pubsub_topic_iam_member" "publisher" {
  for_each = local.publisher_bindings
  topic    = google_pubsub_topic.topic[each.value.topic].id
  role     = "roles/pubsub.publisher"
  member   = google_service_account.run[each.value.service].member
}

# Pub/Sub push: one account per consuming service (fp-<slug>-push). Its OIDC token is on
# every push request; it may invoke only that service (cloudrun.tf, invoker) and the
# service accepts only its email (FP_PUSH_SERVICE_ACCOUNT) with its audience.
resource "google_service_account" "push" {
  for_each     = local.consumers
  account_id   = "fp-${each.value.db_slug}-push"
  display_name = "Fusion Prime Pub/Sub push to ${each.key}"
}

# The Pub/Sub service agent mints the push OIDC tokens for these accounts.
resource "google_service_account_iam_member" "push_token_creator" {
  for_each           = local.consumers
  service_account_id = google_service_account.push[each.key].name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = local.pubsub_agent
}

# --- the Cloud Build deployer -----------------------------------------------------------

resource "google_service_account" "deployer" {
  account_id   = "fp-deployer"
  display_name = "Fusion Prime Cloud Build deployer"
}

resource "google_project_iam_member" "deployer" {
  for_each = toset(["roles/run.developer", "roles/logging.logWriter"])
  project  = var.project_id
  role     = each.key
  member   = google_service_account.deployer.member
}

resource "google_artifact_registry_repository_iam_member" "deployer" {
  location   = google_artifact_registry_repository.images.location
  repository = google_artifact_registry_repository.images.name
  role       = "roles/artifactregistry.writer"
  member     = google_service_account.deployer.member
}

# to deploy revisions and migration jobs that run as the services' own accounts
resource "google_service_account_iam_member" "deployer_act_as" {
  for_each           = var.services
  service_account_id = google_service_account.run[each.key].name
  role               = "roles/iam.serviceAccountUser"
  member             = google_service_account.deployer.member
}
