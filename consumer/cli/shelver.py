"""``shelver``: consume, replay, produce-sample, show, categorize (no Kafka), doctor, review, train, evaluate."""
from __future__ import annotations

import argparse
import json
import signal
import sys
from contextlib import nullcontext
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from consumer.config import ConfigError, Settings, load_settings, unknown_env_vars
from consumer.logs import Scrubber, configure, get_logger

log = get_logger("shelver.cli")


def _seconds(text: str) -> float:
    """A positive, finite number of seconds (librdkafka reads a negative timeout as "wait for ever")."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def _fail(message: str, code: int) -> int:
    """One plain line on stderr (logging may not be configured yet: the log level itself can be the problem)."""
    print(f"shelver: {message}", file=sys.stderr, flush=True)
    return code


def _load_categorizer(settings: Settings):
    from models.artifact import load_categorizer  # TensorFlow loads only for commands that need it

    return load_categorizer(settings.resolved_artifact_dir(), image_weight=settings.image_weight,
                            abstain_threshold=settings.abstain_threshold, fallback=settings.fallback_category,
                            engine=settings.inference_engine)


def _timestamp(text: str) -> datetime:
    """ISO-8601; a naive time is taken as UTC."""
    t = datetime.fromisoformat(text)
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


class _VersionAction(argparse.Action):
    """``--version``: the package and the artifact it would serve, worked out only when asked."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, help="print the version and the artifact, then exit")

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_text())
        parser.exit()


def version_text() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        package = version("shelver")
    except PackageNotFoundError:  # run from a checkout that was never installed
        package = "unknown (not installed)"
    try:
        artifact_dir = Settings().resolved_artifact_dir()
        artifact = json.loads((artifact_dir / "manifest.json").read_text())["version"]
    except Exception as exc:  # noqa: BLE001 - --version must print even when the configuration is broken
        artifact = f"unavailable ({type(exc).__name__})"
    return f"shelver {package} (artifact {artifact}; Python {sys.version.split()[0]})"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="shelver", description=__doc__)
    p.add_argument("--version", action=_VersionAction)
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("consume", help="run the consumer until SIGTERM/SIGINT")
    c.add_argument("--max-events", type=int, help="stop after this many events are committed")
    c.add_argument("--idle-exit-seconds", type=float, help="stop after this long without new events")

    r = sub.add_parser("replay", help="copy a time range of a topic into the replay topic")
    r.add_argument("--from", dest="source", help="source topic (default: the input topic)")
    r.add_argument("--since", type=_timestamp, required=True, help="ISO-8601 start (inclusive)")
    r.add_argument("--until", type=_timestamp, help="ISO-8601 end (exclusive; default: now)")
    r.add_argument("--to", help="target topic (default: the replay topic)")

    s = sub.add_parser("produce-sample", help="publish sample events from a Kaggle-layout catalogue")
    s.add_argument("--count", type=int, default=200)
    s.add_argument("--data", help="catalogue folder (default: SHELVER_DATA_DIR or the shared copy)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--serve-seconds", type=float, default=0.0, help="keep serving images this long")

    w = sub.add_parser("show", help="print categorized products as a table (read-only)")
    w.add_argument("--count", type=int, default=200)
    w.add_argument("--timeout", type=_seconds, default=120.0)

    k = sub.add_parser("categorize", help="JSON lines of ProductEvents in, CategoryAssigned lines out")
    k.add_argument("--input", required=True, help="file, or - for stdin")
    k.add_argument("--output", required=True, help="file, or - for stdout")

    d = sub.add_parser("doctor", help="check configuration, broker, topics, artifact, allow-list and device")
    d.add_argument("--timeout", type=_seconds, default=10.0, help="seconds to wait for the broker")
    d.add_argument("--skip-artifact", action="store_true", help="skip loading the artifact and TensorFlow")

    v = sub.add_parser("review", help="serve the review console on SHELVER_REVIEW_PORT (docs/human-in-the-loop.md)")
    v.add_argument("--add-user", metavar="NAME", help="add or replace a reviewer in SHELVER_REVIEW_PASSWORD_FILE "
                   "(password from the terminal or one line of stdin), then exit")

    x = sub.add_parser("taxonomy", help="change the target taxonomy without retraining")
    xs = x.add_subparsers(dest="taxonomy_command", required=True)
    xa = xs.add_parser("apply", help="validate a taxonomy file, compute its projections, publish it")
    xa.add_argument("file")
    xa.add_argument("--dry-run", action="store_true", help="validate and compute, do not publish")

    for name in ("train", "evaluate"):
        sub.add_parser(name, help=f"see `shelver {name} --help`", add_help=False)
    return p


def main(argv: list[str] | None = None, load_categorizer: Callable[[Settings], object] | None = None) -> int:
    """Entry point; ``load_categorizer`` replaces the artifact loader (tests inject a small model)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("train", "evaluate"):
        import importlib
        import importlib.util

        from models.paths import PACKAGE_PREFIX

        # A runtime-only install (the Docker image, `pip install shelver`) lacks these: say so
        # before TensorFlow loads rather than with a traceback halfway through the imports.
        missing = [m for m in ("pandas", "sklearn", "matplotlib") if importlib.util.find_spec(m) is None]
        if missing:
            raise SystemExit(f"shelver {argv[0]} needs the training dependencies ({', '.join(missing)} missing): "
                             "pip install 'shelver[train]'")
        importlib.import_module(f"{PACKAGE_PREFIX}training.{argv[0]}").main(argv[1:])
        return 0

    args = _parser().parse_args(argv)
    if args.command == "doctor":  # before the settings load: a configuration error is one of its findings
        from consumer.cli.doctor import main as doctor

        return doctor(args.timeout, args.skip_artifact)
    try:
        settings = load_settings()
    except ConfigError as exc:
        return _fail(f"configuration error: {exc}", 2)
    configure(settings.log_level, secrets=settings.secret_values())
    unknown = unknown_env_vars()
    if unknown:  # not an error: scripts use the prefix too; but a typo should not pass unnoticed
        log.warning("unknown SHELVER_ environment variables ignored", variables=unknown)
    load = load_categorizer or _load_categorizer

    if args.command == "consume":
        # Everything that can be checked cheaply is checked before TensorFlow loads (seconds).
        from consumer.adapters.admin import StartupError, check_startup
        from consumer.startup import artifact_review_threshold, extra_topics

        try:
            settings.resolved_artifact_dir()
            check_startup(settings)
            # The one start-up rule (consumer.startup, the doctor's too): the review topic as well when
            # results under a threshold are routed there (the setting, or the calibrated artifact's default;
            # a loader other than the artifact's, as in tests, is checked once loaded, below).
            if extra := extra_topics(settings, artifact_review_threshold(settings) if load_categorizer is None else None):
                check_startup(settings, topics=extra)
        except (ConfigError, FileNotFoundError) as exc:
            return _fail(f"configuration error: {exc}", 2)
        except StartupError as exc:  # librdkafka's text is quoted: scrub it like a log line
            return _fail(Scrubber(settings.secret_values())(f"start-up check failed: {exc}"), 1)
        from consumer.metrics import Metrics, serve
        from consumer.reload import ModelReloader
        from consumer.service import Service

        # ops-metrics: the probes answer (alive, not ready) while the models load; SIGHUP reloads them.
        metrics = Metrics(stall_s=settings.liveness_stall_s, startup_budget_s=settings.startup_budget_s)
        try:
            server = serve(metrics, settings.metrics_host, settings.metrics_port) if settings.metrics_port else None
        except OSError as exc:
            return _fail(f"cannot serve metrics on {settings.metrics_host}:{settings.metrics_port}: {exc.strerror}", 1)
        from consumer.corrections import start_projection_updater

        # Every model serves with the corrections and taxonomy versions learned so far (hitl): a reloaded
        # model gets its own projection updater, caught up before the swap; the old one stops after it.
        updaters: dict[int, object] = {}

        def load_with_projections():
            loaded = load(settings)
            updaters[id(loaded)] = start_projection_updater(settings, loaded, metrics)
            return loaded

        def retire(old, new) -> None:
            if (updater := updaters.pop(id(old), None)) is not None:
                updater.stop()

        pointer = settings.resolved_artifact_dir if settings.artifact_dir is not None else None
        reloader = ModelReloader(load_with_projections, pointer, settings.reload_poll_s, metrics, on_swap=retire)
        signal.signal(signal.SIGHUP, lambda *_: reloader.request())  # one during start-up reloads after it
        try:
            model = load_with_projections()
        except Exception as exc:  # a damaged artifact: one JSON log line (traceback inside), not a bare traceback
            log.error("models could not be loaded", artifact=str(settings.resolved_artifact_dir()),
                      error=f"{type(exc).__name__}: {exc}", exc_info=True)
            return 1
        if extra := extra_topics(settings, getattr(model, "default_review_threshold", None)):
            try:  # the same rule for the model as loaded (a loader other than the artifact's may differ)
                check_startup(settings, topics=extra)
            except StartupError as exc:
                return _fail(Scrubber(settings.secret_values())(f"start-up check failed: {exc}"), 1)
        metrics.set_model(model)
        reloader.start()
        service = Service(settings, model, max_events=args.max_events, idle_exit_s=args.idle_exit_seconds,
                          metrics=metrics, reloader=reloader)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: service.stop())
        try:
            return service.run()
        finally:
            reloader.close()
            if server is not None:
                server.shutdown()
            for updater in updaters.values():
                if updater is not None:
                    updater.stop()

    if args.command == "review":
        from consumer.review.cli import main as review

        return review(settings, args.add_user)

    if args.command == "taxonomy":
        from consumer.cli.taxonomy_apply import apply_taxonomy
        from models.taxonomy_document import TaxonomyError

        try:
            print(json.dumps(apply_taxonomy(settings, args.file, dry_run=args.dry_run)))
        except TaxonomyError as exc:
            for problem in exc.problems:
                print(f"invalid taxonomy {args.file}: {problem}", file=sys.stderr)
            return 2
        return 0

    if args.command == "replay":
        from consumer.cli.replay import replay

        if not (args.to or settings.replay_topic):
            raise SystemExit("no target topic: pass --to or set SHELVER_REPLAY_TOPIC")
        n = replay(settings, args.source or settings.input_topic, args.since, args.until,
                   args.to or settings.replay_topic, show_progress=True)
        print(json.dumps({"replayed": n}))
        return 0

    if args.command == "produce-sample":
        from consumer.cli.sample import produce_sample

        n = produce_sample(settings, args.count, args.data, seed=args.seed, serve_seconds=args.serve_seconds)
        print(json.dumps({"produced": n, "topic": settings.input_topic}))
        return 0

    if args.command == "show":
        from consumer.cli.show import format_table, read_results

        rows = read_results(settings, args.count, args.timeout)
        print(format_table(rows))
        print(f"{len(rows)} products categorized")
        return 0 if len(rows) >= args.count else 1

    if args.command == "categorize":
        from consumer.adapters.images import ImageFetcher
        from consumer.cli.offline import categorize_lines

        from consumer.cli.offline import replacing

        if args.input != "-" and args.output != "-" and Path(args.output).exists() and \
                Path(args.input).exists() and Path(args.input).samefile(args.output):
            return _fail(f"--output {args.output} is the input file: it would be overwritten", 2)
        # Bytes in: a line that is not UTF-8 is one bad line (`offline._parse`), not the end of the run.
        src = nullcontext(sys.stdin.buffer) if args.input == "-" else open(args.input, "rb")
        categorizer = load(settings)
        # The output file is written beside its place and renamed over it at the end: a failed run leaves
        # an existing file as it was.
        dst = nullcontext(sys.stdout) if args.output == "-" else replacing(Path(args.output))
        with src as src, dst as dst, ImageFetcher(settings, target_size=categorizer.image_size) as fetcher:
            counts = categorize_lines(src, dst, categorizer, fetcher, settings.max_batch_size,
                                      source=Path(args.input).name, review_threshold=settings.review_threshold)
        log.info("categorized", **counts)
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
