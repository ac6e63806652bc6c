"""``/metrics``: Prometheus text from the ledger, read at scrape time.

Its own ``CollectorRegistry`` (never the process-wide default one), holding one
collector that asks ``Console`` for the figures on every scrape: nothing is counted
in the service's hot path, and the figures survive a restart because they come from
the ledger. No label carries a secret: endpoints are labelled by their redacted name.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from focuswatch.alarms import AlarmName
from focuswatch.web.data import Console

__all__ = ["CONTENT_TYPE", "ConsoleCollector", "registry_for", "render"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class ConsoleCollector(Collector):
    """The service's figures, from the ledger, at each scrape."""

    def __init__(self, console: Console) -> None:
        self._console = console

    def collect(self) -> Iterator[GaugeMetricFamily | HistogramMetricFamily]:
        c = self._console
        tiles = GaugeMetricFamily(
            "focuswatch_tiles", "Current tile versions by verdict", labels=["verdict"]
        )
        for verdict, n in c.verdict_counts().items():
            tiles.add_metric([verdict], n)
        yield tiles
        states = GaugeMetricFamily(
            "focuswatch_tile_states", "Current tile versions by ledger state", labels=["state"]
        )
        counts = c.counts()
        for state, n in counts.items():
            states.add_metric([state], n)
        yield states
        yield GaugeMetricFamily(
            "focuswatch_backlog_tiles",
            "Tiles recorded but not yet judged (seen, ready, scoring)",
            value=counts["seen"] + counts["ready"] + counts["scoring"],
        )
        age = c.newest_tile_age()
        yield GaugeMetricFamily(
            "focuswatch_newest_tile_age_seconds",
            "Seconds since the newest tile version was recorded (NaN before the first)",
            value=float("nan") if age is None else age,
        )
        beat = c.meta("heartbeat")
        yield GaugeMetricFamily(
            "focuswatch_heartbeat_age_seconds",
            "Seconds since the service's main loop last wrote its heartbeat",
            value=float("nan") if beat is None else c.clock() - beat[1],
        )
        yield GaugeMetricFamily(
            "focuswatch_alerts_waiting",
            "Alerts in the outbox not delivered yet",
            value=c.alerts_waiting(),
        )
        per_endpoint = GaugeMetricFamily(
            "focuswatch_alert_deliveries_waiting",
            "Alerts an endpoint has not taken yet (endpoint redacted)",
            labels=["endpoint"],
        )
        sent = GaugeMetricFamily(
            "focuswatch_alert_deliveries_sent",
            "Alerts delivered to an endpoint (endpoint redacted)",
            labels=["endpoint"],
        )
        failures = GaugeMetricFamily(
            "focuswatch_alert_delivery_failures",
            "Delivery tries an endpoint failed, in the outbox (endpoint redacted)",
            labels=["endpoint"],
        )
        for e in c.endpoints():
            per_endpoint.add_metric([e.endpoint], e.waiting)
            sent.add_metric([e.endpoint], e.sent)
            failures.add_metric([e.endpoint], e.failures)
        yield per_endpoint
        yield sent
        yield failures
        connected = c.scheduler_connected()
        yield GaugeMetricFamily(
            "focuswatch_scheduler_connected",
            "1 while the Dask scheduler is connected, 0 while not (NaN: no cluster)",
            value=float("nan") if connected is None else float(connected),
        )
        yield GaugeMetricFamily(
            "focuswatch_worker_restarts",
            "Hung or dead workers restarted (as the executor reports it)",
            value=c.worker_restarts(),
        )
        alarm = GaugeMetricFamily(
            "focuswatch_alarm",
            "1 while the alarm lasts (stall, disk_low, behind, endpoint_failing, scheduler_lost)",
            labels=["name"],
        )
        active = {a.name for a in c.alarms()}
        for kind in AlarmName:
            alarm.add_metric([str(kind)], 1 if kind in active else 0)
        yield alarm
        health = c.health()
        yield GaugeMetricFamily(
            "focuswatch_healthy", "1 when /healthz answers 200", value=1 if health.ok else 0
        )
        for which, name, doc in (
            ("scoring", "focuswatch_scoring_seconds", "Scoring time per tile (the worker's)"),
            (
                "verdict",
                "focuswatch_close_to_verdict_seconds",
                "From the tile recorded complete to its verdict committed",
            ),
        ):
            buckets, total, _n = c.histogram(which)
            yield HistogramMetricFamily(name, doc, buckets=buckets, sum_value=total)


def registry_for(console: Console) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ConsoleCollector(console))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
