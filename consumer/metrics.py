"""Prometheus metrics, liveness and readiness of ``shelver consume``, served on one HTTP port.

The per-batch JSON log says what happened to a batch; an operator also needs rates, lag,
latency and probes. The service calls one ``Metrics`` object at a few points (a batch formed, a
batch committed, a commit, a main-loop heartbeat, inference start/end, an assignment); gauges
that mirror service state (batches in flight, paused partitions, consumer lag) are read at
scrape time, so the hot path only increments counters.

Endpoints (``SHELVER_METRICS_PORT``, default 9464; 0: none): ``/metrics`` (Prometheus text),
``/startupz`` (start-up: 200 once the main loop runs, i.e. the models are loaded and warmed),
``/livez`` and its older name ``/healthz`` (liveness: 200 unless the main loop or the inference
thread is stuck, or the process has been up past ``startup_budget_s`` without starting its main
loop) and ``/readyz`` (readiness: models loaded and warmed, group joined, no pipeline failure).
"""
from __future__ import annotations

import collections
import json
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, Info, generate_latest
from prometheus_client.core import GaugeMetricFamily

from consumer.logs import get_logger

log = get_logger("shelver.metrics")

_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


# ---- pure core ---------------------------------------------------------------------------------
def parse_consumer_lag(stats: dict) -> dict[tuple[str, int], int]:
    """librdkafka statistics (topics → partitions → consumer_lag) → lag per real partition.

    librdkafka reports -1 where the lag is unknown (no committed offset or high watermark yet)
    and lists an internal partition "-1" per topic; both are left out.
    """
    lag: dict[tuple[str, int], int] = {}
    for topic, t in (stats.get("topics") or {}).items():
        for key, p in (t.get("partitions") or {}).items():
            partition = int(p.get("partition", key))
            value = p.get("consumer_lag", -1)
            if partition >= 0 and isinstance(value, int) and value >= 0:
                lag[(topic, partition)] = value
    return lag


def image_outcome(image_error: str | None) -> str:
    """A bounded label for an image that was not used: the fetcher's reason without its detail
    (``prepare_failed: OSError`` → ``prepare_failed``)."""
    return (image_error or "").split(":", 1)[0].strip() or "failed"


class Heartbeats:
    """Start-up and liveness from progress marks: the main loop beats every iteration; the inference
    thread is only suspect while it holds a batch (idly waiting on an empty queue is alive). Model
    loading is not a stall, but it has a budget: up past ``startup_budget_s`` without a first beat
    (a hung load, a wedged start-up) is not alive either."""

    def __init__(self, stall_s: float, clock: Callable[[], float] = time.monotonic,
                 startup_budget_s: float | None = None):
        self.stall_s, self.clock, self.startup_budget_s = stall_s, clock, startup_budget_s
        self.born = clock()  # the process is starting (Metrics is made before the models load)
        self.main_beat: float | None = None  # None until the loop runs
        self.infer_since: float | None = None  # when the current batch entered inference

    def startup(self) -> list[str]:
        """Why the service has not started yet: empty once its main loop has run."""
        if self.main_beat is not None:
            return []
        return [f"main loop not started after {self.clock() - self.born:.0f}s (models loading?)"]

    def beat(self) -> None:
        self.main_beat = self.clock()

    def inference(self, busy: bool) -> None:
        self.infer_since = self.clock() if busy else None

    def problems(self) -> list[str]:
        now, out = self.clock(), []
        main, infer = self.main_beat, self.infer_since  # read once: other threads write them
        if main is None and self.startup_budget_s is not None and now - self.born > self.startup_budget_s:
            out.append(f"main loop not started within the start-up budget of {self.startup_budget_s:.0f}s "
                       f"(up {now - self.born:.0f}s)")
        if main is not None and now - main > self.stall_s:
            out.append(f"main loop made no progress for {now - main:.0f}s")
        if infer is not None and now - infer > self.stall_s:
            out.append(f"inference stuck on one batch for {now - infer:.0f}s")
        return out


def readiness_problems(*, model_loaded: bool, joined: bool, failure: str | None, stopping: bool) -> list[str]:
    """Why this instance should not receive traffic yet (or any more); empty when ready."""
    out = []
    if not model_loaded:
        out.append("models not loaded and warmed")
    if not joined:
        out.append("consumer group not joined")
    if failure:
        out.append(f"pipeline failed: {failure}")
    if stopping:
        out.append("stopping")
    return out


# ---- the object the service calls ---------------------------------------------------------------
class Metrics:
    """All metrics of one service instance in their own registry (tests run several per process)."""

    def __init__(self, *, stall_s: float = 120.0, startup_budget_s: float | None = None,
                 registry: CollectorRegistry | None = None):
        r = self.registry = registry or CollectorRegistry()
        self.events_consumed = Counter("shelver_events_consumed", "Events formed into batches, per input topic",
                                       ["topic"], registry=r)
        self.results = Counter("shelver_results", "Results delivered and committed (at-least-once: or due in the next commit)", registry=r)
        self.dead_letters = Counter("shelver_dead_letters",
                                    "Dead letters delivered (input events': and committed, or due), per error code",
                                    ["error"], registry=r)
        self.dead_letters_truncated = Counter(
            "shelver_dead_letters_truncated",
            "Dead letters delivered and committed cut to fit (header truncated=true), per error code",
            ["error"], registry=r)
        self.image_outcomes = Counter("shelver_image_outcomes",
                                      "Images per outcome: used, no_url, timeout, blocked_address, too_large, ...",
                                      ["outcome"], registry=r)
        self.commits = Counter("shelver_commits", "Successful synchronous offset commits", registry=r)
        self.pipeline_failures = Counter("shelver_pipeline_failures",
                                         "Delivery or inference failures that stopped the service", registry=r)
        self.reloads = Counter("shelver_model_reloads", "Model reloads, per result (ok, failed)", ["result"],
                               registry=r)
        self.batch_size = Histogram("shelver_batch_size", "Events per micro-batch", buckets=_BATCH_BUCKETS,
                                    registry=r)
        self.stage_seconds = Histogram(
            "shelver_stage_seconds",
            "Seconds per batch and stage: decode, image_fetch, inference, delivery (produce to last report), commit",
            ["stage"], buckets=_SECONDS_BUCKETS, registry=r)
        self.event_latency = Histogram("shelver_event_latency_seconds",
                                       "Input record timestamp to the delivery of its result",
                                       buckets=_LATENCY_BUCKETS, registry=r)
        self.model_info = Info("shelver_model", "The categorizer being served", registry=r)
        r.register(_StateCollector(self))
        self.heartbeats = Heartbeats(stall_s, startup_budget_s=startup_budget_s)
        self.model_loaded = False
        self.joined = False
        self.lag: dict[tuple[str, int], int] = {}
        self.service: Any = None

    # called once each
    def attach(self, service) -> None:
        """The service whose state the gauges and readiness read at scrape time."""
        self.service = service

    def set_model(self, categorizer) -> None:
        """A categorizer is loaded and warmed (at start-up and after every reload)."""
        self.model_info.info({
            "model_version": str(categorizer.model_version),
            "taxonomy_version": str(categorizer.taxonomy_version),
            "device": _device(categorizer),
        })
        self.model_loaded = True

    def consumer_config(self, interval_ms: int) -> dict[str, Any]:
        """librdkafka options that make the consumer report its lag (stats_cb runs inside consume())."""
        return {"statistics.interval.ms": interval_ms, "stats_cb": self.on_stats} if interval_ms > 0 else {}

    # called by the service
    def on_stats(self, stats_json: str) -> None:
        try:
            self.lag = parse_consumer_lag(json.loads(stats_json))
        except (ValueError, TypeError, AttributeError) as exc:
            log.warning("unreadable librdkafka statistics", error=str(exc))

    def on_assign(self, partitions) -> None:
        self.joined = True

    def on_batch_formed(self, batch) -> None:
        for topic, n in collections.Counter(it.msg.topic() for it in batch.items).items():
            self.events_consumed.labels(topic).inc(n)
        self.batch_size.observe(len(batch.items))

    def on_batch_done(self, batch, now: float) -> None:
        """A batch is delivered and its offsets committed (``now``: perf_counter at that point)."""
        good = batch.good
        # What was delivered, not what was owed: a result refused by the output topic became a dead
        # letter, a dead letter may have been cut to fit, a lost partition's events produced nothing.
        for out in batch.acked:
            if out.kind == "result":
                self.results.inc()
            elif out.kind == "dlq":
                self.dead_letters.labels(out.code).inc()
                if out.kept is not None:
                    self.dead_letters_truncated.labels(out.code).inc()
        images, fetch_s = batch.images.result() if batch.images else ([], 0.0)
        outcomes = collections.Counter("used" if image is not None else image_outcome(error) for image, error in images)
        for outcome, n in outcomes.items():
            self.image_outcomes.labels(outcome).inc(n)
        stages = self.stage_seconds
        stages.labels("decode").observe(batch.decode_s)
        if good:
            stages.labels("image_fetch").observe(fetch_s)
            stages.labels("inference").observe(batch.infer_s)
        if batch.delivered:
            stages.labels("delivery").observe(max(0.0, batch.delivered - batch.emitted))
        stages.labels("commit").observe(max(0.0, now - max(batch.delivered, batch.emitted)))
        # perf_counter → wall clock, to compare with the records' (producer or broker) timestamps
        delivered_wall = time.time() - (time.perf_counter() - (batch.delivered or now))
        for it in good:
            kind, ts_ms = it.msg.timestamp()
            if kind and ts_ms > 0:  # kind 0: TIMESTAMP_NOT_AVAILABLE
                self.event_latency.observe(max(0.0, delivered_wall - ts_ms / 1000))

    # probes
    def startup(self) -> list[str]:
        return self.heartbeats.startup()

    def liveness(self) -> list[str]:
        return self.heartbeats.problems()

    def readiness(self) -> list[str]:
        svc = self.service
        return readiness_problems(
            model_loaded=self.model_loaded, joined=self.joined and svc is not None,
            failure=getattr(svc, "failure", None), stopping=bool(svc is not None and svc.stopping.is_set()),
        )


def _device(categorizer) -> str:
    device = getattr(categorizer, "device", None)
    if device:
        return str(device)
    tf = sys.modules.get("tensorflow")  # never imported here: only asked if the models loaded it
    try:
        return "GPU" if tf is not None and tf.config.list_physical_devices("GPU") else "CPU"
    except Exception:  # noqa: BLE001 - the label is informative only
        return "unknown"


class _StateCollector:
    """Gauges read from the service at scrape time (no bookkeeping on the hot path)."""

    def __init__(self, metrics: Metrics):
        self.m = metrics

    def collect(self):
        svc = self.m.service
        lag = GaugeMetricFamily("shelver_consumer_lag", "Messages behind the high watermark (librdkafka consumer_lag)",
                                labels=["topic", "partition"])
        # One immutable snapshot (consumer.service.partitions.Partitions): the main thread swaps in a new
        # one on every rebalance and never mutates it, so the scrape thread can iterate it safely.
        state = getattr(svc, "partitions", None)
        assigned = state.assigned if state is not None else frozenset()
        for (topic, partition), value in sorted(self.m.lag.items()):
            if svc is None or (topic, partition) in assigned:  # revoked partitions keep stale stats
                lag.add_metric([topic, str(partition)], value)
        yield lag
        inflight = GaugeMetricFamily("shelver_batches_in_flight", "Batches formed and not yet committed")
        inflight.add_metric([], len(getattr(svc, "inflight", ()) or ()))
        yield inflight
        paused = GaugeMetricFamily("shelver_paused_partitions", "Partitions paused by flow control (enough of theirs held)")
        paused.add_metric([], len(state.paused) if state is not None else 0)
        yield paused


# ---- HTTP --------------------------------------------------------------------------------------
_PROBES = {"/startupz": "startup", "/livez": "liveness", "/healthz": "liveness", "/readyz": "readiness"}


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"
    timeout = 5  # seconds per socket read or write: a client that stalls mid-request lets its thread go

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        path = self.path.split("?", 1)[0]
        m = self.server.metrics
        if path == "/metrics":
            self._send(200, generate_latest(m.registry), CONTENT_TYPE_LATEST)
        elif path in _PROBES:
            problems = getattr(m, _PROBES[path])()
            body = json.dumps({"status": "fail" if problems else "ok", "problems": problems}).encode()
            self._send(503 if problems else 200, body, "application/json")
        else:
            self._send(404, b"not found\n", "text/plain")

    def _send(self, code: int, body: bytes, ctype: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:  # probes every few seconds would flood the log
        pass


class _Server(ThreadingHTTPServer):
    """One thread per connection, at most ``MAX_CONNECTIONS`` at once (more are closed at once): probes and
    scrapers need a few; anyone else who can reach the port must not grow the service's threads. A connection
    is closed ``REQUEST_DEADLINE_S`` after it opened, however slowly its client trickles bytes in (the
    handler's socket timeout bounds each read only), so stalled clients cannot hold the slots for long."""

    daemon_threads = True
    metrics: Metrics
    MAX_CONNECTIONS = 32
    REQUEST_DEADLINE_S = 10.0
    request_queue_size = 64  # the listen backlog: past the cap, connections are closed rather than left waiting

    def __init__(self, address, handler):
        if ":" in address[0]:  # an IPv6 address ("::", "::1")
            self.address_family = socket.AF_INET6
        self._slots = threading.BoundedSemaphore(self.MAX_CONNECTIONS)
        self._opened: dict[socket.socket, float] = {}
        # before binding: a port in use makes the base class call server_close(), which reads _closed
        self._opened_lock, self._closed = threading.Lock(), threading.Event()
        super().__init__(address, handler)
        threading.Thread(target=self._reap, name="metrics-http-deadline", daemon=True).start()

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # the client sees the connection closed and retries later
            return
        with self._opened_lock:
            self._opened[request] = time.monotonic()
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._opened_lock:
                self._opened.pop(request, None)
            self._slots.release()

    def _reap(self) -> None:
        while not self._closed.wait(0.5):
            now = time.monotonic()
            with self._opened_lock:
                late = [r for r, t in self._opened.items() if now - t > self.REQUEST_DEADLINE_S]
            for request in late:
                try:  # its handler reads end of file and ends: the slot is free again
                    request.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def server_close(self) -> None:
        self._closed.set()
        super().server_close()

    def handle_error(self, request, client_address) -> None:
        """A client that went away (a timed-out probe) is not news; anything else goes to the JSON log."""
        exc = sys.exc_info()[1]
        if not isinstance(exc, (ConnectionError, TimeoutError)):
            log.warning("metrics endpoint request failed", error=f"{type(exc).__name__}: {exc}")


def serve(metrics: Metrics, host: str, port: int) -> _Server:
    """Serve /metrics and the probes (/startupz, /livez = /healthz, /readyz) from a daemon thread; ``port`` 0
    picks a free one."""
    server = _Server((host, port), _Handler)
    server.metrics = metrics
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    log.info("metrics endpoint", address=f"{host}:{server.server_address[1]}",
             paths=["/metrics", *_PROBES])
    return server
