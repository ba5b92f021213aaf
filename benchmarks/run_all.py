"""`make benchmark`: every throughput and latency measurement in one run, written to reports/benchmark.md
and reports/benchmark.png.

    python benchmarks/run_all.py [--quick] [--out reports]

It starts its own Kafka broker (``scripts/kafka-local``, port ``SHELVER_BENCH_KAFKA_PORT``, default
29192) unless ``SHELVER_BOOTSTRAP_SERVERS`` is set, serves the catalogue's images over local HTTP from a
separate process (``benchmarks/image_server.py``), and measures, in this order and in one process:

1. the bare model (``categorize()`` on decoded inputs) per engine: TensorFlow graph and LiteRT, batch 32,
   and LiteRT at batch 1;
2. the service end to end through the broker with a backlog (batch 32, both engines), and one product
   at a time (``max_batch_size=1``), with the time spent in each stage; after an unreported run that
   warms the broker's JVM, each timed from the first assignment to the commit of the last event;
3. latency at a fixed production rate of 50% and 80% of the measured end-to-end capacity, for
   ``--latency-seconds`` each over 6 partitions: p50/p95/p99 overall and per partition, after an
   unreported run at 50% for ``--warmup-seconds``;
4. ``shelver categorize``'s path (no Kafka) on as many other products, right after the end-to-end LiteRT run;
5. where TensorFlow sees a GPU, the graph there at batch 32, 64 and 128, float32 and mixed precision
   (``benchmarks/gpu.py``; the report says it was skipped elsewhere).

Ratios are taken within the run, so a machine shared with other work still gives comparable rows.
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import gpu  # noqa: E402
from image_server import CpuMeter, image_server  # noqa: E402
from latency import LatencyRun, Timed, describe, run_latency  # noqa: E402

from consumer.adapters.admin import ensure_topics  # noqa: E402
from consumer.config import Settings  # noqa: E402
from consumer.logs import configure  # noqa: E402
from consumer.cli.sample import publish, sample_events  # noqa: E402
from consumer.service import Service  # noqa: E402
from models.engine import INT8_FILE, cpu_flags, vector_extensions  # noqa: E402


@dataclass
class Row:
    mode: str
    engine: str
    batch: int
    events: int
    seconds: float
    stages: dict | None = None

    @property
    def eps(self) -> float:
        return self.events / self.seconds


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def bench_model(model, texts, images, batch: int) -> float:
    model.categorize(texts[:batch], images[:batch])  # warm-up: allocations, interpreter shapes
    start = time.perf_counter()
    for i in range(0, len(texts), batch):
        model.categorize(texts[i : i + batch], images[i : i + batch])
    return time.perf_counter() - start


class TimedFetcher:
    """The real image fetcher, with the wall time of its HTTP part recorded."""

    def __init__(self, fetcher):
        self._f, self.seconds = fetcher, 0.0

    def fetch_many(self, urls, target_size=None):
        t = time.perf_counter()
        try:
            return self._f.fetch_many(urls, target_size)
        finally:
            self.seconds += time.perf_counter() - t

    def close(self):
        self._f.close()


class StageModel(Timed):
    """Inference and image preparation (decode + resize) timed separately."""

    def __init__(self, model):
        super().__init__(model)
        self.prepare_s = 0.0

    def prepare_images(self, images):
        t = time.perf_counter()
        try:
            return self._model.prepare_images(images)
        finally:
            self.prepare_s += time.perf_counter() - t


def bench_service(base: Settings, model, catalogue, image_url: str, n: int, batch: int, partitions: int = 6,
                  pids: tuple[int | None, int | None] = (None, None)) -> Row:
    from consumer.adapters.images import ImageFetcher

    tag = uuid.uuid4().hex[:8]
    s = base.model_copy(update=dict(
        group_id=f"bench-{tag}", input_topic=f"bench.in.{tag}", replay_topic=None,
        output_topic=f"bench.out.{tag}", dlq_topic=f"bench.dlq.{tag}", max_batch_size=batch,
        image_allowed_hosts=[*base.image_allowed_hosts, "127.0.0.1"], log_level="WARNING",
    ))
    ensure_topics(s, partitions=partitions)
    publish(s, sample_events(catalogue, image_url, n, seed=1))
    staged, fetcher = StageModel(model), TimedFetcher(ImageFetcher(s))
    svc = Service(s, staged, fetcher, max_events=n)
    thread = threading.Thread(target=svc.run, name="service")  # its CPU: the Kafka loop (image_server.THREAD_GROUPS)
    thread.start()
    while not svc.assignment and thread.is_alive():
        time.sleep(0.01)
    start = time.perf_counter()
    meter = CpuMeter(*pids)  # broker, image server
    # The clock stops at the commit of the last event: leaving the group and closing the clients
    # afterwards (about 0.5 s here) is shutdown, not throughput. Polled every 5 ms.
    while svc.completed < n and thread.is_alive():
        time.sleep(0.005)
    wall = time.perf_counter() - start
    cpu = meter.stop()
    thread.join()
    fetcher.close()
    if svc.completed < n:
        raise RuntimeError(f"service stopped after {svc.completed}/{n} events: {svc.failure}")
    stages = {"inference": sum(t for _, t in staged.stats), "prepare": staged.prepare_s, "http": fetcher.seconds,
              "batches": len(staged.stats), "cpu": cpu}
    return Row("end to end", getattr(model, "engine", "custom"), batch, n, wall, stages)


def outside_share(row: Row) -> float:
    """The service's CPU outside inference over its inference CPU, per event, in one end-to-end run."""
    cpu = row.stages["cpu"]
    return cpu["rest"] / cpu["inference"]


def _find_row(rows: list[Row], engine: str) -> Row:
    return next(r for r in rows if (r.mode, r.engine, r.batch) == ("end to end", engine, 32))


def bench_categorize(base: Settings, model, catalogue, image_url: str, n: int, batch: int) -> Row:
    """``shelver categorize``'s path (`consumer.cli.offline.categorize_lines`) on the end-to-end run's products,
    as JSON lines in memory, with the real image fetcher: no Kafka, model load excluded."""
    import io

    from consumer.adapters.images import ImageFetcher
    from consumer.cli.offline import categorize_lines

    s = base.model_copy(update=dict(image_allowed_hosts=[*base.image_allowed_hosts, "127.0.0.1"]))
    src = io.StringIO("".join(e.model_dump_json() + "\n" for e in sample_events(catalogue, image_url, n, seed=2)))
    fetcher = ImageFetcher(s)
    try:
        start = time.perf_counter()
        counts = categorize_lines(src, io.StringIO(), model, fetcher, batch)
        wall = time.perf_counter() - start
    finally:
        fetcher.close()
    if counts["results"] != n:
        raise RuntimeError(f"categorize gave {counts} for {n} products")
    return Row("categorize (no Kafka)", getattr(model, "engine", "custom"), batch, n, wall)


def broker_pid(env: dict | None) -> int | None:
    try:
        return int((Path(env["KAFKA_STATE_DIR"]) / "kafka.pid").read_text()) if env else None
    except (OSError, ValueError):
        return None


def start_broker() -> tuple[str, dict | None]:
    if os.environ.get("SHELVER_BOOTSTRAP_SERVERS"):
        return os.environ["SHELVER_BOOTSTRAP_SERVERS"], None
    port = os.environ.get("SHELVER_BENCH_KAFKA_PORT", "29192")
    env = {**os.environ, "KAFKA_PORT": port, "KAFKA_STATE_DIR": str(REPO / ".kafka" / f"bench-{port}")}
    subprocess.run([REPO / "scripts" / "kafka-local", "stop"], env=env, check=True, capture_output=True)
    subprocess.run(["rm", "-rf", env["KAFKA_STATE_DIR"]], check=True)
    subprocess.run([REPO / "scripts" / "kafka-local", "start"], env=env, check=True)
    return f"127.0.0.1:{port}", env


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-events", type=int, default=512)
    p.add_argument("--e2e-events", type=int, default=1500)
    p.add_argument("--single-events", type=int, default=150)
    p.add_argument("--warmup-events", type=int, default=1000, help="an unreported run that warms the broker's JVM")
    p.add_argument("--warmup-seconds", type=float, default=20, help="an unreported fixed-rate run before the latency runs")
    p.add_argument("--latency-seconds", type=float, default=60)
    p.add_argument("--cpu-rounds", type=int, default=5,
                   help="end-to-end runs per engine (batch 32) whose CPU outside inference the report gives")
    p.add_argument("--quick", action="store_true", help="small counts and 20 s latency runs (harness check)")
    p.add_argument("--data")
    p.add_argument("--out", default=str(REPO / "reports"))
    args = p.parse_args(argv)
    if args.quick:
        args.model_events, args.e2e_events, args.single_events, args.latency_seconds = 128, 256, 40, 20
        args.warmup_events, args.warmup_seconds = 64, 6

    from models.artifact import load_categorizer
    from training.data import data_dir, load_catalogue

    configure("WARNING")
    t_run = time.perf_counter()
    started = datetime.now(timezone.utc)
    load_before = os.getloadavg()
    root = data_dir(args.data)
    catalogue = load_catalogue(root)
    artifact = Settings().resolved_artifact_dir()
    engines = ("tensorflow", "litert") + (("litert-int8",) if (artifact / INT8_FILE).exists() else ())
    models = {e: load_categorizer(artifact, engine=e) for e in engines}
    version = models["litert"].model_version
    rows_df = catalogue.sample(args.model_events, random_state=0)
    texts = list(rows_df["productDisplayName"])
    images = [models["litert"].prepare_image(Image.open(q)) for q in rows_df["image_path"]]
    rows: list[Row] = []
    # Interleaved rounds (order rotating): a load change on a shared machine hits every row alike.
    configs = [("tensorflow", 32), ("litert", 32), ("litert", 1)] + [("litert-int8", 32)] * ("litert-int8" in models)
    spent = {c: [0, 0.0] for c in configs}
    rounds = 4
    for r in range(rounds):
        for engine, batch in configs[r % len(configs):] + configs[:r % len(configs)]:
            sl = slice(r, None, rounds)
            t, im = texts[sl], images[sl]
            if batch == 1:
                t, im = t[:32], im[:32]
            spent[(engine, batch)][0] += len(t)
            spent[(engine, batch)][1] += bench_model(models[engine], t, im, batch)
    for (engine, batch), (n, secs) in spent.items():
        rows.append(Row("bare model", engine, batch, n, secs))
        print(f"bare model {engine} b{batch}: {rows[-1].eps:.1f} events/s", flush=True)
    if "litert-int8" in models:  # the image networks alone, fp32 and 8-bit (issue #18's goal is about these)
        pixels = np.stack(images)
        image_spent = {"litert": 0.0, "litert-int8": 0.0}
        for r in range(rounds):
            for engine in (("litert", "litert-int8") if r % 2 == 0 else ("litert-int8", "litert")):
                t = time.perf_counter()
                for i in range(0, len(pixels), 32):
                    models[engine]._image_fn(pixels[i : i + 32])
                image_spent[engine] += time.perf_counter() - t
        for engine, secs in image_spent.items():
            rows.append(Row("bare image model", engine, 32, rounds * len(pixels), secs))
            print(f"bare image model {engine} b32: {rows[-1].eps:.1f} images/s", flush=True)
    # The TensorFlow graph on a GPU at batch 32/64/128, float32 and mixed precision (a skip line without one)
    gpu_result = gpu.run(artifact, np.stack(images), texts, batches=[b for b in gpu.BATCHES if b <= len(images)])
    print("\n".join(gpu.markdown(gpu_result)), flush=True)
    # The text half alone (issue #14's budget: at most 2 core-ms per event at batch 32)
    from text_cost import run as text_cost_run

    text_cost = text_cost_run(artifact)["core_ms_per_event"]
    # The broker starts after the bare model's rounds: its JVM's start-up would share their cores.
    bootstrap, broker_env = start_broker()
    try:
        settings = Settings(bootstrap_servers=bootstrap)
        latency: list[LatencyRun] = []
        with image_server(root / "images") as (url, server_pid):
            # A freshly started broker's JVM compiles its hot paths during its first thousand records
            # (1.8 vs 1.0 core-ms per event in the first and later runs): warm it as a running one is.
            bench_service(settings, models["litert"], catalogue, url, args.warmup_events, 32)
            runs = [("litert", 32, args.e2e_events), ("tensorflow", 32, args.e2e_events // 3),
                    ("litert", 1, args.single_events)]
            if "litert-int8" in models:  # what `auto` runs where the artifact's quantization report accepted it
                runs.insert(1, ("litert-int8", 32, args.e2e_events))
            for engine, batch, n in runs:
                # the bare model measured right before and right after, as the same-moment reference
                m = min(128, len(texts))
                before = bench_model(models[engine], texts[:m], images[:m], batch) if batch > 1 else 0.0
                rows.append(bench_service(settings, models[engine], catalogue, url, n, batch,
                                          pids=(broker_pid(broker_env), server_pid)))
                if batch > 1:
                    after = bench_model(models[engine], texts[:m], images[:m], batch)
                    rows[-1].stages["bare_eps"] = 2 * m / (before + after)
                print(f"end to end {engine} b{batch}: {rows[-1].eps:.1f} events/s", flush=True)
                if (engine, batch) == ("litert", 32):  # the file path, right after the stream it should keep up with
                    rows.append(bench_categorize(settings, models[engine], catalogue, url, n, batch))
                    print(f"categorize {engine} b{batch}: {rows[-1].eps:.1f} events/s", flush=True)
            # CPU outside inference per event moves from run to run on a shared 2-core machine (0.17-0.23 for
            # LiteRT over twelve runs on 2026-12-04): more runs per engine, interleaved, and the report gives
            # each run and their median.
            cpu_rounds = {e: [outside_share(_find_row(rows, e))] for e in ("litert", "litert-int8") if e in models}
            for _ in range(args.cpu_rounds - 1):
                for engine in cpu_rounds:
                    again = bench_service(settings, models[engine], catalogue, url, args.e2e_events, 32,
                                          pids=(broker_pid(broker_env), server_pid))
                    cpu_rounds[engine].append(outside_share(again))
                    print(f"CPU outside inference {engine} b32: {cpu_rounds[engine][-1]:.3f}", flush=True)
            capacity = next(r.eps for r in rows if (r.mode, r.engine, r.batch) == ("end to end", "litert", 32))
            # The broker's fixed-rate paths (small produce and fetch requests) warm up too: 4.2 core-ms per
            # event in the first fixed-rate minute, 1.3 later; an unreported run at half the capacity first.
            run_latency(settings, models["litert"], catalogue, url, 0.5 * capacity, args.warmup_seconds)
            for share in (0.5, 0.8):
                run = run_latency(settings, models["litert"], catalogue, url, share * capacity, args.latency_seconds,
                                  pids=(broker_pid(broker_env), server_pid))
                run.share = share
                latency.append(run)
                print(describe(run), flush=True)
    finally:
        if broker_env:
            subprocess.run([REPO / "scripts" / "kafka-local", "stop"], env=broker_env, check=False)
    header = dict(
        started=started.strftime("%Y-%m-%d %H:%M UTC"), cpu=cpu_model(), cores=os.cpu_count(),
        affinity=len(os.sched_getaffinity(0)), load_before=load_before, load_after=os.getloadavg(),
        model=version, duration=time.perf_counter() - t_run, commit=_git_commit(), quick=args.quick,
        text_cost=text_cost, vector_extensions=vector_extensions(cpu_flags()), cpu_rounds=cpu_rounds,
        gpu=gpu_result,
    )
    out = Path(args.out)
    from report import write_report

    md = write_report(out, header, rows, latency, settings)
    print(f"wrote {md} and {md.with_suffix('.png')} in {header['duration']:.0f} s")


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


if __name__ == "__main__":
    main()
