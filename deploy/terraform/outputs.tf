output "service_urls" {
  description = "Cloud Run URL of each service (for `fusion-prime verify`)."
  value       = { for name, s in google_cloud_run_v2_service.service : name => s.uri }
}

output "database_instances" {
  description = "Connection name (PROJECT:REGION:INSTANCE) of each service's Cloud SQL instance."
  value       = { for slug, i in google_sql_database_instance.db : slug => i.connection_name }
}

output "database_secrets" {
  description = "Secret Manager secret holding each service's DATABASE_URL."
  value       = { for slug, s in google_secret_manager_secret.db_url : slug => s.secret_id }
}

output "console_url" {
  description = "Cloud Run URL of the operator console (open it through `gcloud run services proxy console`)."
  value       = one(google_cloud_run_v2_service.console[*].uri)
}
