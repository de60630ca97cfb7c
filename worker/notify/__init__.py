"""Notifications: an outbox written inside the promotion's transaction, delivered by a separate dispatcher.

Flow: ``enqueue_notifications`` (routing, in the caller's transaction) -> ``notification_outbox`` ->
``Dispatcher`` (claim as a lease, send, record) -> Slack, email, PagerDuty, webhook.
"""

from worker.notify.dispatcher import Dispatcher
from worker.notify.events import EVENTS, EventFacts
from worker.notify.outbox import enqueue_notifications, requeue_dead

__all__ = ["EVENTS", "Dispatcher", "EventFacts", "enqueue_notifications", "requeue_dead"]
