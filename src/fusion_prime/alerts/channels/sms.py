"""SMS through an HTTP API shaped like Twilio's Messages API:
POST {ALERTS_SMS_API_URL}/2010-04-01/Accounts/{sid}/Messages.json, form fields To, From,
Body, HTTP basic auth (account sid, auth token); 201 with {"sid": ..., "status":
"queued"} means accepted (sent), not delivered."""

from __future__ import annotations

import base64
import hashlib
import hmac

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
        form = {"To": d.address, "From": s.sms_from, "Body": d.message.short}
        if s.sms_status_callback_url:
            form["StatusCallback"] = s.sms_status_callback_url
        out = await self.clients.post(
            url,
            data=form,
            headers={"Idempotency-Key": str(d.notification_id)},
            basic_auth=(s.sms_account_sid, s.sms_auth_token.get_secret_value()),
            timeout=s.http_timeout,
        )
        sid = out.json.get("sid") if isinstance(out.json, dict) else None
        result = from_http(out, provider_ref=str(sid) if sid else None)
        if result.outcome == "accepted" and sid:
            return Result("accepted", result.latency_ms, result.code, str(sid), None, None, sid)
        return result


def status_signature(auth_token: str, url: str, params: dict[str, str]) -> str:
    """The provider's signature of a status callback (Twilio's scheme): base64 of
    HMAC-SHA1 over the callback URL followed by every POST parameter, sorted by name,
    as name + value."""
    payload = url + "".join(k + params[k] for k in sorted(params))
    mac = hmac.new(auth_token.encode(), payload.encode(), hashlib.sha1).digest()
    return base64.b64encode(mac).decode()


def verify_status(auth_token: str, url: str, params: dict[str, str], header: str | None) -> bool:
    if not header:
        return False
    return hmac.compare_digest(status_signature(auth_token, url, params), header.strip())
