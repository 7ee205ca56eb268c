# The secrets a service requires besides DATABASE_URL (ServiceSpec.required_secrets, carried
# by generated.auto.tfvars.json as env name -> secret id, fp-<db_slug>-<env-name-kebab>).
# Each gets a generated value (64 letters and digits: above every service's minimum, e.g.
# 32 for SETTLEMENT_WEBHOOK_KEY and 16 for KYC_WEBHOOK_SECRET), and only the service's own
# runtime account may read it. Rotation: docs/deploy.md.

locals {
  service_secrets = merge([
    for svc, s in var.services : {
      for env_name, secret_id in s.secrets : secret_id => { service = svc, env = env_name }
    }
  ]...)
}

resource "random_password" "service" {
  for_each = local.service_secrets
  length   = 64
  special  = false # goes into headers and HMAC keys; 64 alphanumerics are ~380 bits
  lifecycle {
    # never regenerate a value because these arguments changed: SETTLEMENT_WEBHOOK_KEY
    # encrypts stored data; rotation is an explicit -replace (docs/deploy.md)
    ignore_changes = [length, special]
  }
}

resource "google_secret_manager_secret" "service" {
  for_each  = local.service_secrets
  secret_id = each.key
  labels    = { app = "fusion-prime", service = each.value.service }
  replication {
    auto {}
  }
  depends_on = [google_project_service.api]
}

resource "google_secret_manager_secret_version" "service" {
  for_each    = local.service_secrets
  secret      = google_secret_manager_secret.service[each.key].id
  secret_data = random_password.service[each.key].result
}

resource "google_secret_manager_secret_iam_member" "service" {
  for_each  = local.service_secrets
  secret_id = google_secret_manager_secret.service[each.key].secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = google_service_account.run[each.value.service].member
}

# Credentials of outside providers a service uses when given (ServiceSpec.optional_secrets:
# the alerts service's SMTP password and SMS token). Terraform creates the secret and the
# access grant but no value: the operator adds the provider's credential
# (`gcloud secrets versions add ...`) before the first deploy (docs/deploy.md).
locals {
  provider_secrets = merge([
    for svc, s in var.services : {
      for env_name, secret_id in s.provider_secrets : secret_id => { service = svc, env = env_name }
    }
  ]...)
}

resource "google_secret_manager_secret" "provider" {
  for_each  = local.provider_secrets
  secret_id = each.key
  labels    = { app = "fusion-prime", service = each.value.service }
  replication {
    auto {}
  }
  depends_on = [google_project_service.api]
}

resource "google_secret_manager_secret_iam_member" "provider" {
  for_each  = local.provider_secrets
  secret_id = google_secret_manager_secret.provider[each.key].secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = google_service_account.run[each.value.service].member
}
