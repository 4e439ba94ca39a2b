"""The sender: a background thread moving events from the outbox to OpenMeter.

It runs in the LiteLLM process, one per logger, and for ``outbox drain``.

It batches (``batch_size`` events, or whatever waits after ``flush_interval``),
retries with exponential backoff and full jitter until delivered, splits a rejected
batch to isolate the bad events, and pauses when the key or endpoint is wrong.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
import uuid
from collections.abc import Callable, Sequence

from ..settings import Settings
from . import forksafe
from .outbox import Claimed, Outbox
from .transport import HttpTransport, Outcome, SendResult

log = logging.getLogger("litellm_openmeter")

BASE_DELAY = 0.5
MAX_RETRY_AFTER = 3600.0


def backoff_delay(attempt: int, cap: float, rng: Callable[[], float] = random.random) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(cap, base * 2**attempt)]."""
    ceiling: float = min(cap, BASE_DELAY * float(2 ** min(attempt, 30)))
    return rng() * ceiling


class Sender:
    """Delivers the outbox in the background; start it with :meth:`ensure_started`."""

    def __init__(
        self,
        settings: Settings,
        outbox: Outbox,
        transport_factory: Callable[[], HttpTransport] | None = None,
    ) -> None:
        self.settings = settings
        self.outbox = outbox
        self._transport_factory = transport_factory or (lambda: HttpTransport(settings))
        self._transport: HttpTransport | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._idle = threading.Condition()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._owner = ""
        self._failures = 0
        self._flush_requests = 0
        self.paused_reason: str | None = None
        self._busy = False
        self._last_forget = 0.0
        self._last_checkpoint = 0.0
        forksafe.track(self)

    @property
    def lease_seconds(self) -> float:
        """How long a claimed batch stays ours (longer than any one send)."""
        return self.settings.http_timeout * 3 + 30.0

    @property
    def running(self) -> bool:
        """True while the thread runs in this process."""
        return self._thread is not None and self._thread.is_alive()

    def ensure_started(self) -> None:
        """Start the thread if this process has none (first use, or after fork)."""
        if self.running and not self._stop.is_set():
            return
        with self._start_lock:
            if self.running and not self._stop.is_set():
                return
            self._stop.clear()
            self._owner = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
            self._thread = threading.Thread(
                target=self._run, name="litellm-openmeter-sender", daemon=True
            )
            self._thread.start()

    def wake(self) -> None:
        """Ask the thread to look at the outbox now."""
        self._wake.set()

    def flush(self, timeout: float, through: int | None = None) -> bool:
        """Send what is waiting; True when the outbox emptied within ``timeout`` seconds
        (with ``through``, of the events stored up to that ``Outbox.last_seq``: while
        other threads go on calling, the outbox may never be empty)."""
        deadline = time.monotonic() + timeout
        self.ensure_started()
        with self._idle:
            self._flush_requests += 1
        try:
            self._wake.set()
            while True:
                if self.outbox.is_empty(through):
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self.running:
                    return self.outbox.is_empty(through)
                with self._idle:
                    self._idle.wait(min(remaining, 0.05))
        finally:
            with self._idle:
                self._flush_requests -= 1

    def stop(self, timeout: float) -> None:
        """Stop the thread (after the batch in hand) and close the HTTP client."""
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                return  # still sending: the thread closes its client when it ends
        self._close_transport()

    def _close_transport(self) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.close()

    def after_fork_in_child(self) -> None:
        """Forget the parent's thread and client; the child starts its own lazily."""
        self._thread = None
        self._transport = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._idle = threading.Condition()
        self._start_lock = threading.Lock()
        self._flush_requests = 0

    # -- the thread --------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                delay = self._step()
            except Exception as exc:  # keep the thread alive whatever happens
                log.exception("litellm-openmeter sender error (will retry): %s", exc)
                delay = backoff_delay(self._failures, self.settings.retry_max_delay)
                self._failures += 1
            with self._idle:
                self._idle.notify_all()
            self._sleep(delay)
        if self._stop.is_set():
            self._close_transport()

    def _sleep(self, delay: float) -> None:
        """Wait ``delay`` seconds. While delivery is healthy, new events or a flush end
        the wait; a backoff after a failure (which may be the server's Retry-After) is
        cut short by stop() alone."""
        deadline = time.monotonic() + delay
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            woken = self._wake.wait(min(remaining, 1.0))
            self._wake.clear()
            self._checkpoint_now_and_then()
            if self._stop.is_set():
                return
            if self._failures == 0 and (woken or self._flushing()):
                return

    def _checkpoint_now_and_then(self) -> None:
        # Hooks never checkpoint the WAL (see Outbox.checkpoint); this keeps it short,
        # also while an outage holds the thread in backoff.
        now = time.monotonic()
        if now - self._last_checkpoint >= 1.0:
            self._last_checkpoint = now
            try:
                self.outbox.checkpoint()
            except Exception as exc:  # a busy database: try again next time
                log.debug("litellm-openmeter checkpoint skipped: %s", exc)

    def _flushing(self) -> bool:
        return self._flush_requests > 0 or self._stop.is_set()

    def _step(self) -> float:
        """One round: send a batch if one is due; returns how long to wait after."""
        now = time.time()
        if now - self._last_forget > 60:
            self.outbox.forget_delivered()
            self._last_forget = now
        self._checkpoint_now_and_then()
        size = self.settings.batch_size
        ready, oldest_age = self.outbox.ready(size)
        if ready == 0:
            return self.settings.flush_interval
        if (
            ready < size
            and not self._flushing()
            and (oldest_age or 0) < self.settings.flush_interval
        ):
            return self.settings.flush_interval - (oldest_age or 0)
        batch = self.outbox.claim(self._owner, size, self.lease_seconds)
        if not batch:
            return 0.05
        result = self._deliver(batch)
        if result.outcome is Outcome.RETRY or result.outcome is Outcome.PAUSE:
            self._failures += 1
            if result.outcome is Outcome.PAUSE:
                if self.paused_reason != result.detail:
                    log.error(
                        "litellm-openmeter delivery paused, every event kept: %s", result.detail
                    )
                    self.outbox.set_paused(result.detail)
                self.paused_reason = result.detail
                return self.settings.retry_max_delay
            delay = backoff_delay(self._failures - 1, self.settings.retry_max_delay)
            if result.retry_after is not None:
                delay = max(delay, min(result.retry_after, MAX_RETRY_AFTER))
            # The first failure of a streak is a warning; the rest would only repeat it.
            log.log(
                logging.WARNING if self._failures == 1 else logging.DEBUG,
                "litellm-openmeter delivery failed, %d event(s) kept, retry in %.1fs: %s",
                len(batch),
                delay,
                result.detail,
            )
            return delay
        if self.paused_reason is not None or self._failures:
            log.warning("litellm-openmeter delivery resumed after %d failure(s)", self._failures)
        if self.paused_reason is not None:
            self.outbox.set_paused("")
        self.paused_reason = None
        self._failures = 0
        return 0.0

    def _send(self, batch: Sequence[Claimed]) -> SendResult:
        try:
            client = self._client()
        except Exception as exc:  # no CA bundle yet, say: retried like a failed send
            return SendResult(
                Outcome.RETRY, detail=f"cannot make the HTTP client: {type(exc).__name__}: {exc}"
            )
        return client.send([item.body for item in batch])

    def _client(self) -> HttpTransport:
        """The HTTP transport, made on first use."""
        if self._transport is None:
            self._transport = self._transport_factory()
        return self._transport

    def _deliver(self, batch: Sequence[Claimed]) -> SendResult:
        """Send a claimed batch and settle every event in it (ack, bury or release).

        A rejected batch is split in halves until the rejected events stand alone;
        the good ones are delivered, the bad ones dead-lettered. Returns the result
        that decides the backoff (the first retry or pause met, else delivered).
        """
        result = self._send(batch)
        if result.outcome is Outcome.DELIVERED:
            self.outbox.ack(self._owner, batch)
            return result
        if result.outcome is Outcome.REJECTED:
            if len(batch) == 1:
                log.error(
                    "litellm-openmeter: OpenMeter rejected event %s, kept as a dead letter: %s",
                    batch[0].id,
                    result.detail,
                )
                self.outbox.bury(self._owner, batch, "rejected", result.detail)
                return SendResult(Outcome.DELIVERED, result.status)
            middle = len(batch) // 2
            first = self._deliver(batch[:middle])
            if first.outcome in (Outcome.RETRY, Outcome.PAUSE):
                self.outbox.release(self._owner, batch[middle:], first.detail)
                return first
            return self._deliver(batch[middle:])
        self.outbox.release(self._owner, batch, result.detail)
        return result
