"""Email over SMTP with STARTTLS (aiosmtplib). Credentials come from settings and are
never logged or recorded; the attempt keeps the server's reply code and text."""

from __future__ import annotations

import ssl
import time
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

import aiosmtplib

from fusion_prime.alerts.channels import Delivery, Result, not_configured
from fusion_prime.alerts.settings import AlertsSettings

NOTIFICATION_HEADER = "X-Fusion-Prime-Notification-Id"


class EmailSender:
    def __init__(self, settings: AlertsSettings) -> None:
        self.settings = settings
        self._tls: ssl.SSLContext | None = None
        if settings.smtp_ca_file:
            self._tls = ssl.create_default_context(cafile=settings.smtp_ca_file)

    def build(self, d: Delivery) -> EmailMessage:
        msg = EmailMessage()
        msg["From"] = self.settings.smtp_from
        msg["To"] = d.address
        msg["Subject"] = d.message.subject
        msg["Date"] = formatdate(usegmt=True)
        # stable across retries: a receiving system can drop a second copy
        domain = self.settings.smtp_from.rpartition("@")[2] or "fusion-prime.invalid"
        msg["Message-ID"] = make_msgid(idstring=str(d.notification_id), domain=domain)
        msg[NOTIFICATION_HEADER] = str(d.notification_id)
        msg.set_content(d.message.text)
        msg.add_alternative(d.message.html, subtype="html")
        return msg

    async def __call__(self, d: Delivery) -> Result:
        s = self.settings
        if not s.smtp_host:
            return not_configured("ALERTS_SMTP_HOST is not set (no SMTP server)")
        started = time.perf_counter()
        password = s.smtp_password.get_secret_value() if s.smtp_password else None
        try:
            smtp = aiosmtplib.SMTP(
                hostname=s.smtp_host,
                port=s.smtp_port,
                timeout=s.smtp_timeout,
                start_tls=s.smtp_starttls,
                tls_context=self._tls,
            )
            async with smtp:
                if s.smtp_username:
                    await smtp.login(s.smtp_username, password or "")
                refused, reply = await smtp.send_message(self.build(d))
        except aiosmtplib.SMTPRecipientsRefused as exc:
            first = exc.recipients[0] if exc.recipients else None
            code = first.code if first else None
            return self._refused(code, first.message if first else str(exc), started)
        except aiosmtplib.SMTPResponseException as exc:
            return self._refused(exc.code, exc.message, started)
        except Exception as exc:  # connection refused, timeout, TLS failure: try again
            return Result("retry", _ms(started), error=f"{type(exc).__name__}: {exc}"[:500])
        if refused:
            code, text = next(iter(refused.values()))
            return self._refused(code, text, started)
        code_text, _, rest = reply.partition(" ")
        return Result(
            "accepted",
            _ms(started),
            code=int(code_text) if code_text.isdigit() else 250,
            response=reply[:500],
            provider_ref=rest[:200] or None,
        )

    def _refused(self, code: int | None, text: str, started: float) -> Result:
        # 5xx: the server will not take it (bad mailbox, policy); 4xx: try again later
        permanent = code is not None and 500 <= code < 600
        return Result(
            "failed" if permanent else "retry",
            _ms(started),
            code=code,
            response=str(text)[:500],
            error=f"SMTP {code}: {text}"[:500],
        )


def _ms(started: float) -> int:
    return int((time.perf_counter() - started) * 1000)
