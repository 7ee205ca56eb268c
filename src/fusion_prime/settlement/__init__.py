"""Settlement: escrows from chain events, settlement commands, history and signed webhooks."""
