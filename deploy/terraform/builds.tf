# One Cloud Build trigger per shipped service on its generated build file, running as the
# fp-deployer account (iam.tf). Created only when a GitHub repository is connected.

resource "google_cloudbuild_trigger" "deploy" {
  for_each        = var.github_repository == null ? {} : var.services
  name            = "fp-deploy-${each.key}"
  description     = "Build, migrate, deploy without traffic, verify and promote ${each.key}."
  filename        = "deploy/cloudbuild/${each.key}.yaml"
  service_account = google_service_account.deployer.id
  included_files = [
    "src/**",
    "pyproject.toml",
    "requirements.lock",
    "deploy/Dockerfile",
    "deploy/cloudbuild/${each.key}.yaml",
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
