# Least privilege: one runtime service account per shipped service, allowed to read only
# its own connection-string secret, to connect only to its own Cloud SQL instance, to
# publish only to the topics it publishes and to consume only its own subscriptions.

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

resource "google_pubsub_subscription_iam_member" "subscriber" {
  for_each     = { for name, s in local.subscriptions : name => s if contains(keys(var.services), s.service) }
  subscription = google_pubsub_subscription.sub[each.key].id
  role         = "roles/pubsub.subscriber"
  member       = google_service_account.run[each.value.service].member
}

# Push subscriptions authenticate to the (private) services with this account's OIDC token.
resource "google_service_account" "push" {
  account_id   = "fp-pubsub-push"
  display_name = "Fusion Prime Pub/Sub push (invokes consumers)"
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
