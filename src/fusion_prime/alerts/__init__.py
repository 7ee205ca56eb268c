"""The alert notification service: margin events to people, honestly tracked."""
