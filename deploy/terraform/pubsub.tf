# Topics and subscriptions from the event registry (fusion_prime.platform.bus.registry).
# Every subscription gets message ordering (the publisher sets ordering key = subject), a
# retry policy and its own dead-letter topic after the registry's max_attempts; a
# "-dead-letter-hold" subscription keeps the dead letters for inspection and replay.
#
# Delivery: a subscription of a shipped consumer is a push subscription to
# <service url>/events/pubsub/<subscription> with an OIDC token of the service's push
# account and audience (checked by the service: FP_PUSH_SERVICE_ACCOUNT, FP_PUSH_AUDIENCE).
# A subscription whose consumer is not shipped (no Cloud Run service, or var.image still
# null) stays pull: there is no endpoint to push to, and pushing to a missing one would
# only burn the delivery attempts into the dead-letter topic. Pull keeps the messages (7
# days) until the consumer ships and the next apply turns it into push.
#
# External consumers: a registry subscription without a handler (external = true, e.g.
# settlement-signer on settlement.commands.v1) belongs to a system outside Fusion Prime. It
# is always pull, with the same retry and dead-letter policy; its consumer gets the
# subscriber role on it through var.external_consumers (nothing here consumes it).

locals {
  subscriptions = merge([
    for topic, t in var.topics : {
      for name, s in t.subscriptions : name => merge(s, { topic = topic })
    }
  ]...)
  external_bindings = merge([
    for sub, members in var.external_consumers : {
      for m in members : "${sub}/${m}" => { subscription = sub, member = m }
    }
    if contains(keys(local.subscriptions), sub) && try(local.subscriptions[sub].external, false)
  ]...)
  publisher_bindings = merge([
    for svc, s in var.services : {
      for topic in s.publishes : "${svc}/${topic}" => { service = svc, topic = topic }
      if contains(keys(var.topics), topic)
    }
  ]...)
}

resource "google_pubsub_topic" "topic" {
  #checkov:skip=CKV_GCP_83:Google-managed encryption; event payloads carry identifiers and amounts already held in the services' databases, and a CMEK per topic adds a KMS dependency to every publish.
  for_each                   = var.topics
  name                       = each.key
  message_retention_duration = "604800s"
  labels                     = { app = "fusion-prime", publisher = replace(each.value.publisher, ".", "-") }
  depends_on                 = [google_project_service.api]
}

resource "google_pubsub_topic" "dead_letter" {
  #checkov:skip=CKV_GCP_83:Same as the source topics: Google-managed encryption.
  for_each                   = local.subscriptions
  name                       = "${each.key}-dead-letter"
  message_retention_duration = "604800s"
  labels                     = { app = "fusion-prime", dead_letter_of = each.key }
  depends_on                 = [google_project_service.api]
}

resource "google_pubsub_subscription" "sub" {
  for_each                   = local.subscriptions
  name                       = each.key
  topic                      = google_pubsub_topic.topic[each.value.topic].id
  ack_deadline_seconds       = 60 # also the push request timeout
  message_retention_duration = "604800s"
  enable_message_ordering    = true
  labels                     = { app = "fusion-prime", consumer = each.value.service }

  retry_policy {
    minimum_backoff = "10s"
    maximum_backoff = "600s"
  }

  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.dead_letter[each.key].id
    max_delivery_attempts = each.value.max_delivery_attempts
  }

  expiration_policy {
    ttl = "" # never expire while the consumer is scaled down
  }

  dynamic "push_config" {
    for_each = each.value.push_path != null && contains(keys(local.run_services), each.value.service) ? [each.value] : []
    content {
      push_endpoint = "${google_cloud_run_v2_service.service[push_config.value.service].uri}${push_config.value.push_path}"
      oidc_token {
        service_account_email = google_service_account.push[push_config.value.service].email
        audience              = var.services[push_config.value.service].push_audience
      }
    }
  }
}

# The end of the line for messages that exhausted their attempts: kept 7 days for inspection
# and replay, never dead-lettered again.
resource "google_pubsub_subscription" "dead_letter_hold" {
  for_each                   = local.subscriptions
  name                       = "${each.key}-dead-letter-hold"
  topic                      = google_pubsub_topic.dead_letter[each.key].id
  ack_deadline_seconds       = 60
  message_retention_duration = "604800s"
  labels                     = { app = "fusion-prime", dead_letter_of = each.key }
  expiration_policy {
    ttl = ""
  }
}

# Pub/Sub's own service agent moves messages to the dead-letter topic: it must publish
# there and acknowledge on the source subscription.
resource "google_pubsub_topic_iam_member" "dead_letter_publisher" {
  for_each = local.subscriptions
  topic    = google_pubsub_topic.dead_letter[each.key].id
  role     = "roles/pubsub.publisher"
  member   = local.pubsub_agent
}

resource "google_pubsub_subscription_iam_member" "dead_letter_subscriber" {
  for_each     = local.subscriptions
  subscription = google_pubsub_subscription.sub[each.key].id
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_agent
}

# The external consumer of an external subscription pulls and acknowledges it.
resource "google_pubsub_subscription_iam_member" "external_consumer" {
  for_each     = local.external_bindings
  subscription = google_pubsub_subscription.sub[each.value.subscription].id
  role         = "roles/pubsub.subscriber"
  member       = each.value.member
}
