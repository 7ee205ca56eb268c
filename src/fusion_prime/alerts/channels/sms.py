"""SMS through an HTTP API shaped like Twilio's Messages API:
POST {ALERTS_SMS_API_URL}/2010-04-01/Accounts/{sid}/Messages.json, form fields To, From,
Body, HTTP basic auth (account sid, auth token); 201 with {"sid": ..., "status":
"queued"} means accepted (sent), not delivered."""

from __future__ import annotations

import httpx

from fusion_prime.alerts.channels import Delivery, Result, from_http, not_configured
from fusion_prime.alerts.settings import AlertsSettings
from fusion_prime.platform import outbound


class SmsSender:
    def __init__(self, clients: outbound.ClientPool, settings: AlertsSettings) -> None:
        self.clients = clients
        self.settings = settings

    async def __call__(self, d: Delivery) -> Result:
        s = self.settings
        if not (s.sms_api_url and s.sms_account_sid and s.sms_auth_token and s.sms_from):
            return not_configured(
                "ALERTS_SMS_API_URL, ALERTS_SMS_ACCOUNT_SID, ALERTS_SMS_AUTH_TOKEN and "
                "ALERTS_SMS_FROM are needed"
            )
        url = f"{s.sms_api_url.rstrip('/')}/2010-04-01/Accounts/{s.sms_account_sid}/Messages.json"
        out = await outbound.post(
            self.clients.next(),
            url,
            data={"To": d.address, "From": s.sms_from, "Body": d.message.short},
            headers={"Idempotency-Key": str(d.notification_id)},
            auth=httpx.BasicAuth(s.sms_account_sid, s.sms_auth_token.get_secret_value()),
            timeout=s.http_timeout,
        )
        sid = out.json.get("sid") if isinstance(out.json, dict) else None
        result = from_http(out, provider_ref=str(sid) if sid else None)
        if result.outcome == "accepted" and sid:
            return Result("accepted", result.latency_ms, result.code, str(sid), None, None, sid)
        return result
