"""Every topic, who publishes it, its subscriptions and their handlers, in one place.

The deploy files (Pub/Sub topics, subscriptions, dead-letter topics) and the audit are
generated from / checked against this registry.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Subscription:
    """A subscription and who consumes it.

    `handler` None means the consumer is outside this system (e.g. the transaction
    signer): the subscription is still declared everywhere (`events migrate` / the postgres
    broker, a Pub/Sub *pull* subscription with its dead-letter topic in Terraform) so the
    broker keeps every message for it, but no process here consumes it and no push
    endpoint is generated for it. `service` then names the external consumer.
    """

    name: str
    service: str  # the consuming service (or the external system, see above)
    handler: str | None  # "module:attribute" of its handler; None: consumed outside
    max_attempts: int = 5

    @property
    def external(self) -> bool:
        return self.handler is None


@dataclass(frozen=True)
class Topic:
    name: str
    publisher: str
    event_types: tuple[str, ...]
    subscriptions: tuple[Subscription, ...] = ()


TOPICS: tuple[Topic, ...] = (
    Topic(
        "settlement.events.v1",
        # settlement's chain relayer (settlement/relayer.py) reads the escrow contracts
        publisher="settlement",
        event_types=(
            "escrow.deployed",
            "escrow.approved",
            "escrow.released",
            "escrow.refunded",
            "escrow.arbiter_changed",
            "escrow.disputed",
            # published events removed by a reorg deeper than the confirmations
            "chain.reorged",
        ),
        subscriptions=(
            Subscription(
                "settlement-events-consumer",
                "settlement",
                "fusion_prime.settlement.handlers:handle_chain_events",
            ),
            Subscription(
                "risk-events-consumer", "risk", "fusion_prime.risk.handlers:handle_escrow_events"
            ),
        ),
    ),
    Topic(
        "market.prices.v1",
        publisher="oracle",
        # price.unavailable: a feed lost its quorum (one event per loss; risk ignores it
        # and goes to unknown_price on its own when the last price ages out)
        event_types=("price.updated", "price.unavailable"),
        subscriptions=(
            Subscription(
                "risk-engine-prices-consumer", "risk", "fusion_prime.risk.handlers:handle_prices"
            ),
        ),
    ),
    Topic(
        "alerts.margin.v1",
        publisher="risk",
        event_types=("margin.tier_changed", "margin.reminder", "margin.price_unavailable"),
        subscriptions=(
            Subscription(
                "alert-notification-service",
                "alerts",
                "fusion_prime.alerts.handlers:handle_margin_events",
            ),
        ),
    ),
    Topic(
        "settlement.escrows.v1",
        publisher="settlement",
        event_types=("escrow.state_changed",),
    ),
    # Settlement commands handed to the external transaction signer (outside this system):
    # a submission, and a cancel once it timed out. The outcome comes back as chain events
    # on settlement.events.v1 carrying the command's correlation id.
    Topic(
        "settlement.commands.v1",
        publisher="settlement",
        event_types=("settlement.command_submitted", "settlement.command_cancelled"),
        subscriptions=(Subscription("settlement-signer", "signer", None),),
    ),
    Topic(
        "compliance.decisions.v1",
        publisher="compliance",
        event_types=(
            "kyc.status_changed",
            "aml.screened",
            "sanctions.screened",
            "case.resolved",
        ),
    ),
)


def topic(name: str) -> Topic:
    for t in TOPICS:
        if t.name == name:
            return t
    raise KeyError(f"unknown topic {name!r}")


def subscription(name: str) -> tuple[Topic, Subscription]:
    for t in TOPICS:
        for s in t.subscriptions:
            if s.name == name:
                return t, s
    raise KeyError(f"unknown subscription {name!r}")


def subscriptions_of(service: str) -> list[tuple[Topic, Subscription]]:
    """What a service of this system consumes (never an external consumer's queue)."""
    return [
        (t, s) for t in TOPICS for s in t.subscriptions if s.service == service and not s.external
    ]


def operated_by(service: str) -> list[str]:
    """Subscriptions whose queue this service shows and replays over HTTP (`/bus/...`).

    Each subscription has exactly one such service: its consumer, or for a subscription
    consumed outside this system (the signer's) the publisher of its topic.
    """
    return [
        s.name
        for t in TOPICS
        for s in t.subscriptions
        if (s.service == service and not s.external) or (s.external and t.publisher == service)
    ]
