"""Message bodies: one template per kind (plain text and HTML), rendered with Jinja2.

HTML templates are autoescaped, so an account id or a value from an event can never
inject markup into an email; the plain-text ones are not (escaping would garble them).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

TEMPLATES = Path(__file__).parent / "templates"
SMS_LIMIT = 320  # two concatenated SMS segments


@dataclass(frozen=True)
class Message:
    subject: str
    text: str
    html: str
    context: dict[str, Any]

    @property
    def short(self) -> str:
        """One line for SMS: the subject and the link, cut to the SMS limit."""
        line = f"{self.subject} {self.context['link']}"
        return line if len(line) <= SMS_LIMIT else line[: SMS_LIMIT - 1] + "\u2026"


@cache
def _env() -> Environment:
    return Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(enabled_extensions=("html",), default=False),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        auto_reload=False,  # templates ship with the code: no stat() per message
    )


def render(
    kind: str,
    *,
    account_id: str,
    tier: str,
    data: dict[str, Any],
    link: str,
    count: int = 1,
    test: bool = False,
    html: bool = True,
) -> Message:
    """`html=False` skips the HTML body (only email sends one)."""
    ctx: dict[str, Any] = {
        "account_id": account_id,
        "tier": tier,
        "from_tier": data.get("from_tier"),
        "factor": data.get("factor"),
        "prices": sorted((data.get("prices") or {}).items()),
        "data": _Data(data),
        "link": link,
        "count": count,
        "test": test,
    }
    env = _env()
    text_tpl = env.get_template(f"{kind}.txt")
    subject = "".join(text_tpl.blocks["subject"](text_tpl.new_context(ctx))).strip()
    if test:
        subject = f"[TEST] {subject}"
    return Message(
        subject=" ".join(subject.split()),
        text=text_tpl.render(ctx),
        html=env.get_template(f"{kind}.html").render(ctx) if html else "",
        context=ctx,
    )


class _Data(dict[str, Any]):
    """Event data for templates: a missing key reads as None (events may omit fields)."""

    def __getattr__(self, name: str) -> Any:
        return self.get(name)
