"""Google ID tokens for Cloud Run's IAM check of the services the console reads.

On Cloud Run the five services are private (`--no-allow-unauthenticated`): every request
needs an ID token of a caller with `run.invoker`, for the audience of the service's URL.
The console's own API key stays in `Authorization` (the service checks it and the role);
the ID token goes in `X-Serverless-Authorization`, which Cloud Run checks first and then
strips of its signature, so the two never compete for one header.

Tokens come from google-auth (`google.oauth2.id_token.fetch_id_token_credentials`: a
service-account file in GOOGLE_APPLICATION_CREDENTIALS, else the metadata server, whose
address GCE_METADATA_HOST / GCE_METADATA_IP move), one credential per audience, kept
until google-auth considers it near expiry (`valid`: within its refresh threshold, 3 min
45 s, of `exp`). google-auth's transport blocks, so a refresh runs in a thread, once per
audience however many requests wait for it. A token is never logged.
"""

from __future__ import annotations

import asyncio
from typing import Any

import google.auth.transport.requests
from google.auth import exceptions
from google.oauth2 import id_token

HEADER = "X-Serverless-Authorization"
Error = exceptions.GoogleAuthError


class IdTokens:
    def __init__(self) -> None:
        self._credentials: dict[str, Any] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def token(self, audience: str) -> str:
        """A valid ID token for `audience` (google.auth.exceptions.GoogleAuthError if the
        environment has no identity to sign one with)."""
        cached: Any = self._credentials.get(audience)
        if cached is not None and cached.valid:
            return str(cached.token)
        async with self._locks.setdefault(audience, asyncio.Lock()):
            cached = self._credentials.get(audience)
            if cached is None or not cached.valid:
                cached = await asyncio.to_thread(_refreshed, audience, cached)
                self._credentials[audience] = cached
            return str(cached.token)


def _refreshed(audience: str, creds: Any) -> Any:
    request = google.auth.transport.requests.Request()
    if creds is None:
        creds = id_token.fetch_id_token_credentials(  # type: ignore[no-untyped-call]
            audience, request=request
        )
    creds.refresh(request)
    return creds
