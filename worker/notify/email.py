"""Email: one message with a plain-text and an HTML part telling the same facts, sent with aiosmtplib."""

from __future__ import annotations

import html
from collections.abc import Sequence
from email.message import EmailMessage
from email.utils import formatdate

import aiosmtplib

from worker.config import Settings
from worker.notify.delivery import AttemptResult
from worker.notify.events import EventFacts, text_table


def message_id(outbox_id: int, sender: str) -> str:
    """A Message-ID fixed per outbox row: a redelivered duplicate carries the same id, so mail clients and
    archives that deduplicate on it show one message."""
    domain = sender.rpartition("@")[2] or "localhost"
    return f"<autopromote.outbox.{outbox_id}@{domain}>"


def build_email(
    facts: EventFacts,
    *,
    sender: str,
    recipients: Sequence[str],
    include_detailed_metrics: bool = False,
    outbox_id: int | None = None,
) -> EmailMessage:
    """The message; the text part is the canonical one, the HTML part renders the same rows."""
    msg = EmailMessage()
    msg["Subject"] = _subject(facts)
    msg["From"] = sender
    msg["To"] = ", ".join(recipients)
    msg["Date"] = formatdate(localtime=False, usegmt=True)
    if outbox_id is not None:
        msg["Message-ID"] = message_id(outbox_id, sender)
        msg["X-Autopromote-Outbox-Id"] = str(outbox_id)
    msg["X-Autopromote-Event"] = facts.event
    msg.set_content(_text_body(facts, include_detailed_metrics))
    msg.add_alternative(_html_body(facts, include_detailed_metrics), subtype="html")
    return msg


async def send_email(message: EmailMessage, settings: Settings) -> AttemptResult:
    """Deliver through the configured SMTP server. A 5xx answer is permanent, a 4xx worth retrying; connection
    failures and timeouts propagate to the dispatcher, which retries them."""
    if not settings.smtp_host:
        return AttemptResult(ok=False, error="SMTP_HOST is not set", permanent=True)
    smtp = aiosmtplib.SMTP(
        hostname=settings.smtp_host,
        port=settings.smtp_port,
        use_tls=settings.smtp_security == "tls",
        start_tls=settings.smtp_security == "starttls",
        username=settings.smtp_username,
        password=settings.smtp_password,
        timeout=settings.notify_timeout,
    )
    try:
        async with smtp:
            refused, reply = await smtp.send_message(message)
    except aiosmtplib.SMTPRecipientsRefused as exc:
        codes = [r.code for r in exc.recipients]
        detail = "; ".join(f"{r.recipient}: {r.code} {r.message}" for r in exc.recipients)
        return AttemptResult(
            ok=False,
            smtp_reply=detail,
            error=f"all recipients refused: {detail}",
            permanent=all(code >= 500 for code in codes),
        )
    except aiosmtplib.SMTPResponseException as exc:
        reply_text = f"{exc.code} {exc.message}"
        return AttemptResult(
            ok=False, smtp_reply=reply_text, error=f"{type(exc).__name__}: {reply_text}", permanent=exc.code >= 500
        )
    smtp_reply = f"250 {reply}"
    if refused:
        smtp_reply += "; refused: " + "; ".join(f"{rcpt}: {r.code} {r.message}" for rcpt, r in refused.items())
    return AttemptResult(ok=True, smtp_reply=smtp_reply)


def _subject(facts: EventFacts) -> str:
    subject = f"[autopromote] {facts.title}: {facts.experiment}"
    if facts.variant:
        subject += f" ({facts.variant})"
    return subject


def _text_body(facts: EventFacts, detailed: bool) -> str:
    width = max(len(label) for label, _ in facts.fact_rows())
    lines = [facts.headline, ""]
    lines += [f"{label.ljust(width)}  {value}" for label, value in facts.fact_rows()]
    if facts.reason:
        lines += ["", f"Reason: {facts.reason}"]
    if facts.safety_checks:
        lines += ["", "Safety checks:"]
        lines += [f"  [{c.verdict}] {c.name}" + (f": {c.message}" if c.message else "") for c in facts.safety_checks]
    if facts.guardrails:
        lines += ["", "Guardrails:"]
        lines += [f"  [{'pass' if g.passed else 'FAIL'}] {g.line}" for g in facts.guardrails]
    if detailed and facts.variants:
        lines += ["", "Per-variant statistics:", text_table(facts.variant_table())]
    if facts.dry_run:
        lines += ["", "Dry run: nothing was changed."]
    if facts.dashboard_url:
        lines += ["", f"Dashboard: {facts.dashboard_url}"]
    return "\n".join(lines) + "\n"


def _html_body(facts: EventFacts, detailed: bool) -> str:
    e = html.escape
    rows = "".join(f'<tr><th align="left">{e(k)}</th><td>{e(v)}</td></tr>' for k, v in facts.fact_rows())
    parts = [
        f"<h2>{e(facts.title)}: {e(facts.experiment)}</h2>",
        f"<p>{e(facts.headline)}</p>",
        f"<table>{rows}</table>",
    ]
    if facts.reason:
        parts.append(f"<p><strong>Reason:</strong> {e(facts.reason)}</p>")
    if facts.safety_checks:
        items = "".join(
            f"<li>[{e(c.verdict)}] <strong>{e(c.name)}</strong>" + (f": {e(c.message)}" if c.message else "") + "</li>"
            for c in facts.safety_checks
        )
        parts.append(f"<h3>Safety checks</h3><ul>{items}</ul>")
    if facts.guardrails:
        items = "".join(f"<li>[{'pass' if g.passed else 'FAIL'}] {e(g.line)}</li>" for g in facts.guardrails)
        parts.append(f"<h3>Guardrails</h3><ul>{items}</ul>")
    if detailed and facts.variants:
        table = facts.variant_table()
        head = "".join(f"<th>{e(cell)}</th>" for cell in table[0])
        body = "".join("<tr>" + "".join(f"<td>{e(cell)}</td>" for cell in row) + "</tr>" for row in table[1:])
        parts.append(f"<h3>Per-variant statistics</h3><table><tr>{head}</tr>{body}</table>")
    if facts.dry_run:
        parts.append("<p>Dry run: nothing was changed.</p>")
    if facts.dashboard_url:
        parts.append(f'<p><a href="{e(facts.dashboard_url)}">Open in the dashboard</a></p>')
    return "<html><body>" + "".join(parts) + "</body></html>\n"
