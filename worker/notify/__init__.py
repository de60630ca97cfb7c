"""Notifications: an outbox written inside the promotion's transaction, delivered by a separate dispatcher.

Flow: ``enqueue_notifications`` (routing, in the caller's transaction) -> ``notification_outbox`` ->
``Dispatcher`` (claim as a lease, send, record) -> Slack, email, PagerDuty, webhook.
"""

from typing import TYPE_CHECKING

from worker.notify.events import EVENTS, EventFacts
from worker.notify.outbox import enqueue_notifications, requeue_dead

if TYPE_CHECKING:
    from worker.notify.dispatcher import Dispatcher

__all__ = ["EVENTS", "Dispatcher", "EventFacts", "enqueue_notifications", "requeue_dead"]


def __getattr__(name: str) -> object:
    # The Dispatcher (and aiohttp, its HTTP client) is loaded where it runs, not by every command that only
    # queues notifications (outbox).
    if name == "Dispatcher":
        from worker.notify.dispatcher import Dispatcher

        return Dispatcher
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
