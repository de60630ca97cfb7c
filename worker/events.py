"""In-process fan-out of live events (evaluations, promotions, rollbacks) to dashboard subscribers.

Two kinds of subscriber, both fed by ``publish()`` without it ever awaiting (it runs on the event loop that
decides promotions, so it must cost little and never wait for a reader):

- ``subscribe()``: a queue of events for code in this process (tests, tools). A subscriber that falls
  behind loses its oldest events.
- ``open_stream(encode, limit=...)``: a network client such as an ``/events`` connection. Each event is encoded
  once per encoder, however many clients share it, and each client gets the same bytes. A client's queue is
  bounded; a client whose queue is full is dropped (its ``closed`` is set and its ``on_drop`` called), so a
  reader that stopped reading costs at most ``max_queue`` events of memory and then nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import structlog

from worker.domain.events import BusEvent

log = structlog.get_logger("worker.events")

# Turns an event into what a stream client receives; None skips the event for those clients.
Encoder = Callable[[BusEvent], bytes | None]


class TooManyClients(Exception):
    """``open_stream()`` refused a client because ``limit`` clients are already connected."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"{limit} stream client(s) already connected")
        self.limit = limit


class StreamClient:
    """One network subscriber: a bounded queue of encoded events, ``None`` once it is closed."""

    def __init__(self, max_queue: int, on_drop: Callable[[], None] | None) -> None:
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue(max_queue + 1)  # +1: room for the close mark
        self._max_queue = max_queue
        self.on_drop = on_drop
        self.closed = False
        self.dropped = False

    def _offer(self, data: bytes) -> bool:
        """Queue ``data``; False (and nothing queued) when the client is closed or its queue is full."""
        if self.closed:
            return False
        if self._queue.qsize() >= self._max_queue:
            return False
        self._queue.put_nowait(data)
        return True

    def close(self) -> None:
        """Let the reader of this client finish: what is queued is discarded, ``get()`` returns None."""
        if self.closed:
            return
        self.closed = True
        while not self._queue.empty():  # free the buffered events now, not when the reader comes back
            self._queue.get_nowait()
        self._queue.put_nowait(None)

    async def get(self) -> bytes | None:
        """The next encoded event; None once the client is closed (dropped or shut down)."""
        if self.closed and self._queue.empty():
            return None
        return await self._queue.get()


class EventBus:
    """publish() never blocks: in-process subscribers lose old events, a stream client that falls behind is dropped."""

    def __init__(self, max_queue: int = 256) -> None:
        self._subscribers: set[asyncio.Queue[BusEvent]] = set()
        self._clients: dict[Encoder, set[StreamClient]] = {}
        self._max_queue = max_queue
        self.dropped_clients = 0

    def publish(self, event: BusEvent) -> None:
        """Hand ``event`` (a typed event of worker.domain.events) to every subscriber and stream client."""
        for queue in list(self._subscribers):
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(event)
        for encode, clients in list(self._clients.items()):
            if not clients:
                continue
            try:
                data = encode(event)  # once per event, not once per client
            except Exception:  # a display problem must not fail the evaluation or promotion that published
                log.exception("events.encode_failed", event_type=str(event.get("type")))
                continue
            if data is None:
                continue
            for client in list(clients):
                if not client._offer(data):
                    self._drop(encode, client)

    def _drop(self, encode: Encoder, client: StreamClient) -> None:
        self._clients.get(encode, set()).discard(client)
        if client.closed:
            return
        client.dropped = True
        client.close()
        self.dropped_clients += 1
        log.warning(
            "events.client_dropped",
            queued_limit=self._max_queue,
            message="a live-update client stopped reading; it was disconnected and may reconnect",
        )
        if client.on_drop is not None:
            client.on_drop()

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers) + self.client_count

    @property
    def client_count(self) -> int:
        return sum(len(clients) for clients in self._clients.values())

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[asyncio.Queue[BusEvent]]:
        queue: asyncio.Queue[BusEvent] = asyncio.Queue(self._max_queue)
        self._subscribers.add(queue)
        try:
            yield queue
        finally:
            self._subscribers.discard(queue)

    def open_stream(
        self, encode: Encoder, *, limit: int | None = None, on_drop: Callable[[], None] | None = None
    ) -> StreamClient:
        """Register a stream client (close it with ``close_stream``); TooManyClients when ``limit`` are open.

        Synchronous on purpose: the count check and the registration cannot interleave with another request.
        """
        if limit is not None and self.client_count >= limit:
            raise TooManyClients(limit)
        client = StreamClient(self._max_queue, on_drop)
        self._clients.setdefault(encode, set()).add(client)
        return client

    def close_stream(self, encode: Encoder, client: StreamClient) -> None:
        """Unregister a client (its reader is done) and let its ``get()`` return None."""
        clients = self._clients.get(encode)
        if clients is not None:
            clients.discard(client)
            if not clients:
                del self._clients[encode]
        client.close()
