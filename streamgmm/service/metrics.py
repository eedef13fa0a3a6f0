"""Prometheus metrics and a small HTTP server with ``/metrics`` and ``/healthz``.

Each processor owns its own registry, so several processors (or tests) in one Python process do
not collide on metric names.

Example
-------
>>> m = Metrics()
>>> m.records_in.inc(3)
>>> b"streamgmm_records_in_total 3.0" in m.exposition()
True
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["Metrics", "MetricsServer"]


class Metrics:
    """The processor's counters and gauges."""

    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.records_in = Counter("streamgmm_records_in", "Input records read", registry=r)
        self.records_out = Counter("streamgmm_records_out", "Output records written", registry=r)
        self.dead_letters = Counter(
            "streamgmm_dead_letters",
            "Invalid input records sent to the dead-letter sink",
            registry=r,
        )
        self.anomalies = Counter("streamgmm_anomalies", "Records flagged as anomalies", registry=r)
        self.checkpoints = Counter("streamgmm_checkpoints", "Checkpoints written", registry=r)
        self.consumer_lag = Gauge(
            "streamgmm_consumer_lag", "Records behind the high watermark (Kafka)", registry=r
        )
        self.samples_seen = Gauge(
            "streamgmm_model_samples_seen", "Rows the model has learned from", registry=r
        )
        self.threshold = Gauge(
            "streamgmm_anomaly_threshold", "Current anomaly threshold", registry=r
        )
        self.target_flag_rate = Gauge(
            "streamgmm_target_flag_rate",
            "Configured false-alarm rate: the flag rate expected on normal records",
            registry=r,
        )
        self.recent_flag_rate = Gauge(
            "streamgmm_recent_flag_rate",
            "Share of records flagged over the gate's last complete window (refresh_every)",
            registry=r,
        )
        self.flag_rate_alarm = Gauge(
            "streamgmm_flag_rate_alarm",
            "1 while the flag rate has stayed far above the target (stream_factor times it) "
            "for several windows: many real anomalies, features the model does not fit, or a "
            "changing stream",
            registry=r,
        )
        self.flag_rate_warnings = Counter(
            "streamgmm_flag_rate_warnings",
            "Times the flag-rate alarm was raised (and logged)",
            registry=r,
        )
        self.changes_detected = Counter(
            "streamgmm_changes_detected",
            "Changes detected in the score stream (the model then re-adapts fast)",
            registry=r,
        )
        self._gate_counts: tuple | None = None  # the gate's counters when last observed
        self.batch_latency = Histogram(
            "streamgmm_batch_latency_seconds",
            "Time to decode, score, learn and encode one mini-batch",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )
        # Changelog mode: where assigned partitions' states came from, and the local cache.
        self.partitions_restored = Counter(
            "streamgmm_partitions_restored",
            "Partitions whose state was restored on assignment, by source: the local cache "
            "(it held the changelog's newest write) or the changelog topic",
            ["source"],
            registry=r,
        )
        self.cache_writes = Counter(
            "streamgmm_state_cache_writes",
            "Partition copies written to the local state cache after checkpoints: a delta "
            "(the states the checkpoint wrote) or full (every state of the partition)",
            ["kind"],
            registry=r,
        )
        self.cache_seconds = Counter(
            "streamgmm_state_cache_seconds",
            "Time spent writing the local state cache",
            registry=r,
        )
        self.last_checkpoint = time.time()
        self.last_batch = time.time()
        self.checkpoint_age = Gauge(
            "streamgmm_checkpoint_age_seconds", "Seconds since the last checkpoint", registry=r
        )
        self.checkpoint_age.set_function(lambda: time.time() - self.last_checkpoint)
        self.running = True
        # Kafka mode: a callable telling whether any broker connection is up (None otherwise).
        self.broker_check = None
        self.broker_connected = Gauge(
            "streamgmm_broker_connected",
            "1 while a connection to a Kafka broker is up (Kafka mode)",
            registry=r,
        )
        self.broker_connected.set_function(self._broker_up)

    def _broker_up(self) -> float:
        try:
            return float(bool(self.broker_check())) if self.broker_check else float("nan")
        except Exception:
            return 0.0

    def observe_gate(self, gate) -> None:
        """Copy the anomaly gate's threshold, flag rates, alarm and change count into the
        metrics (after each batch; counters advance by what the gate counted since)."""
        if gate.threshold_ < float("inf"):
            self.threshold.set(gate.threshold_)
        self.target_flag_rate.set(gate.false_alarm_rate)
        self.recent_flag_rate.set(gate.recent_flag_rate_)  # NaN until a window is complete
        self.flag_rate_alarm.set(1.0 if gate.flag_rate_alarm_ else 0.0)
        counts = (gate.n_rate_warnings_, gate.n_drifts_)
        if self._gate_counts is not None:  # a restored gate's earlier counts are not this run's
            self.flag_rate_warnings.inc(max(counts[0] - self._gate_counts[0], 0))
            self.changes_detected.inc(max(counts[1] - self._gate_counts[1], 0))
        self._gate_counts = counts

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def health(self) -> tuple[int, dict]:
        body = {
            "status": "ok" if self.running else "stopping",
            "records_in": self.records_in._value.get(),
            "records_out": self.records_out._value.get(),
            "dead_letters": self.dead_letters._value.get(),
            "checkpoint_age_seconds": round(time.time() - self.last_checkpoint, 3),
            "seconds_since_last_batch": round(time.time() - self.last_batch, 3),
        }
        if self.broker_check is not None:
            up = self._broker_up() == 1.0
            body["broker_connected"] = up
            if not up and self.running:
                # still 200: the process is fine and reconnecting; restarting it would not help
                body["status"] = "degraded: Kafka broker unreachable"
        return (200 if self.running else 503), body


class MetricsServer:
    """Serves ``/metrics`` (Prometheus text format) and ``/healthz`` (JSON) in a daemon thread.

    ``port=0`` picks a free port; read :attr:`port` after construction.
    """

    def __init__(self, metrics: Metrics, host: str = "127.0.0.1", port: int = 0):
        m = metrics

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path.split("?")[0] == "/metrics":
                    code, ctype, body = 200, CONTENT_TYPE_LATEST, m.exposition()
                elif self.path.split("?")[0] in ("/healthz", "/health"):
                    code, payload = m.health()
                    ctype, body = "application/json", json.dumps(payload).encode()
                else:
                    code, ctype, body = 404, "text/plain", b"not found\n"
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # access logs would drown the structured logs
                pass

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
