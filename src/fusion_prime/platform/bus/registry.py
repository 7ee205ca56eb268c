"""Every topic, who publishes it, its subscriptions and their handlers, in one place.

The deploy files (Pub/Sub topics, subscriptions, dead-letter topics) and the audit are
generated from / checked against this registry.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Subscription:
    name: str
    service: str  # the consuming service
    handler: str  # "module:attribute" of its handler
    max_attempts: int = 5


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
    # Settlement commands handed to the external transaction signer (outside this system);
    # their outcome comes back as chain events on settlement.events.v1.
    Topic(
        "settlement.commands.v1",
        publisher="settlement",
        event_types=("settlement.command_submitted",),
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
    return [(t, s) for t in TOPICS for s in t.subscriptions if s.service == service]
