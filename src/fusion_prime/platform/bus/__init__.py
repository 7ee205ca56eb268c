"""The event bus: envelopes, the topic registry, outbox, inbox, brokers (DESIGN.md "Events")."""
