"""Prometheus metrics of delivery, when ``prometheus_client`` is installed.

A collector on the default registry reads every live logger's ``stats()`` at scrape
time, so LiteLLM proxy's ``/metrics`` shows them with no extra set-up.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

log = logging.getLogger("litellm_openmeter")
_registered = False
_lock = threading.Lock()

GAUGES = {
    "queued": "Events waiting in the outbox",
    "in_flight": "Events claimed by a sender and being sent, or held for a proxy call",
    "dead_lettered": "Events kept as dead letters",
    "outbox_bytes": "Bytes of events in the outbox",
    "oldest_age_seconds": "Age of the oldest undelivered event",
}
COUNTERS = {
    "delivered": "Events delivered to OpenMeter",
    "retried": "Failed delivery attempts that were retried",
    "refused": "Events refused because the outbox was full",
    "unfinished": "LLM calls that started and never reported their usage to the hooks",
}


def register(loggers: Callable[[], Iterable[Any]]) -> bool:
    """Register the collector once per process; False when prometheus_client is absent."""
    global _registered
    try:
        from prometheus_client.core import REGISTRY, CounterMetricFamily, GaugeMetricFamily
    except ImportError:
        return False
    with _lock:
        if _registered:
            return True

        class DeliveryCollector:
            def describe(self) -> list[Any]:
                # Without it the registry would collect (read every outbox) at registration.
                return []

            def collect(self) -> Iterator[Any]:
                snapshots = []
                for lg in loggers():
                    try:
                        snapshots.append((str(lg.settings.outbox_path), lg.stats()))
                    except Exception as exc:  # a scrape never fails because of one outbox
                        log.warning("litellm-openmeter: no metrics for %s: %s", lg, exc)
                for name, text in GAUGES.items():
                    family = GaugeMetricFamily(f"litellm_openmeter_{name}", text, labels=["outbox"])
                    for path, stats in snapshots:
                        family.add_metric([path], float(stats.get(name) or 0))
                    yield family
                for name, text in COUNTERS.items():
                    counter = CounterMetricFamily(
                        f"litellm_openmeter_{name}", text, labels=["outbox"]
                    )
                    for path, stats in snapshots:
                        counter.add_metric([path], float(stats.get(name) or 0))
                    yield counter
                paused = GaugeMetricFamily(
                    "litellm_openmeter_paused",
                    "1 while delivery is paused (key or endpoint rejected)",
                    labels=["outbox"],
                )
                for path, stats in snapshots:
                    paused.add_metric([path], 1.0 if stats.get("paused") else 0.0)
                yield paused

        REGISTRY.register(DeliveryCollector())
        _registered = True
        return True
