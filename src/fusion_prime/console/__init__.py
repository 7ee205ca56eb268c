"""The operator console: server-rendered pages over the services' HTTP APIs, no database."""
