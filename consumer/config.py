"""All configuration in one pydantic-settings object, strict so that mistakes fail at start-up.

Environment variables use the ``SHELVER_`` prefix (``SHELVER_PIPELINE_DEPTH=4``; dicts and lists
as JSON, e.g. ``SHELVER_KAFKA_OPTIONS='{"security.protocol": "SASL_SSL", ...}'``); an optional
YAML/JSON file named by ``SHELVER_CONFIG_FILE`` supplies values that the environment overrides.
librdkafka options are passed through under their own names via ``kafka_options``.

Strictness (issue #6): every value is range- or enum-checked, an unknown key in the config file
is an error, and `load_settings` turns every problem into one `ConfigError` line, so the CLI can
print it and exit 2 before TensorFlow is imported or a broker is contacted. Unknown ``SHELVER_*``
environment variables are *not* errors (scripts and tests use the prefix for their own variables,
see `NON_SETTING_ENV`); `unknown_env_vars` lists them so the CLI can warn, with a close match.

Secrets (credentials in ``kafka_options``/``schema_registry_options``, user info in URLs) are
masked by `Settings.redacted` (the rules: `consumer.secrets`), and `Settings.secret_values` feeds
the log scrubber (`consumer.logs`), so no log line or error message carries them.
"""
from __future__ import annotations

import difflib
import json
import os
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml
from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, JsonConfigSettingsSource, SettingsConfigDict, YamlConfigSettingsSource
from pydantic_settings.exceptions import SettingsError

from consumer.secrets import is_secret_key, mask_options, mask_url, userinfo_secrets

# Paths are defined once, in models.paths (ops-pack); re-exported here for existing callers.
from models.paths import ARTIFACTS_DIR as DEFAULT_ARTIFACTS
from models.paths import REPO_ROOT, newest_artifact, resolve_artifact_pointer

ENV_PREFIX = "SHELVER_"
# SHELVER_* variables that are not settings: read by the CLI, scripts, training code and tests.
NON_SETTING_ENV = ("SHELVER_CONFIG_FILE", "SHELVER_DATA_DIR", "SHELVER_MARKETPLACE_DIR")
NON_SETTING_ENV_PREFIXES = ("SHELVER_DEMO_", "SHELVER_TEST_", "SHELVER_BENCH_")

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
# librdkafka's accepted values (it treats smallest/beginning as earliest and largest/end as latest).
OffsetReset = Literal["earliest", "latest", "error", "smallest", "largest", "beginning", "end"]


class ConfigError(ValueError):
    """Bad configuration; ``str()`` is one line fit for stderr (no secret in it)."""


def _config_file() -> Path | None:
    path = os.environ.get("SHELVER_CONFIG_FILE")
    return Path(path) if path else None


def _read_config_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"SHELVER_CONFIG_FILE={path}: cannot read it ({exc.strerror or exc})") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        if isinstance(exc, json.JSONDecodeError):
            where = f"{exc.msg}, line {exc.lineno}"
        else:
            mark = getattr(exc, "problem_mark", None)
            where = f"{getattr(exc, 'problem', None) or 'parse error'}" + (f", line {mark.line + 1}" if mark else "")
        kind = "JSON" if path.suffix == ".json" else "YAML"
        raise ConfigError(f"config file {path}: not valid {kind} ({where})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping of setting names to values")
    return data


def _checked_file(path: Path) -> dict[str, Any]:
    """The config file's settings, read strictly: one-line errors, and unknown keys are errors."""
    data = _read_config_file(path)
    known = set(Settings.model_fields)
    unknown = [k for k in data if k not in known]
    if unknown:
        raise ConfigError(f"config file {path}: unknown setting(s) " + ", ".join(
            _with_suggestion(str(k), known) for k in unknown))
    return data


class _YamlFile(YamlConfigSettingsSource):
    def _read_file(self, file_path: Path) -> dict[str, Any]:
        return _checked_file(file_path)


class _JsonFile(JsonConfigSettingsSource):
    def _read_file(self, file_path: Path) -> dict[str, Any]:
        return _checked_file(file_path)


def _file_sources(settings_cls) -> tuple:
    """pydantic-settings' own YAML or JSON source for the file named by SHELVER_CONFIG_FILE (none: no file).
    Unlike theirs, a named file that is missing is an error, not an empty source."""
    path = _config_file()
    if path is None:
        return ()
    if not path.is_file():
        _read_config_file(path)  # raises the one-line error (cannot read it)
    return (_JsonFile(settings_cls, json_file=path) if path.suffix == ".json" else _YamlFile(settings_cls, yaml_file=path),)


def _with_suggestion(name: str, known: set[str]) -> str:
    close = difflib.get_close_matches(name.lower(), sorted(known), n=1, cutoff=0.75)
    return f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else "")


class Settings(BaseSettings):
    # extra="forbid": unknown keyword arguments and config-file keys are errors (env vars are looked up per field).
    # allow_inf_nan=False: "inf" would pass every `gt=0` timeout as an unbounded wait
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid",
                                      allow_inf_nan=False)

    # Kafka
    bootstrap_servers: str = Field("127.0.0.1:9092", min_length=1, description="Kafka bootstrap servers")
    group_id: str = Field("shelver", min_length=1,
                          description="consumer group (run more instances with the same id to scale out)")
    input_topic: str = Field("products.new", min_length=1, description="the new-product events (`ProductEvent`)")
    replay_topic: str | None = Field("products.replay", description="events copied by `shelver replay`, "
                                     "consumed like the input (empty: no replay subscription)")
    output_topic: str = Field("products.categorized", min_length=1,
                              description="the results (`CategoryAssigned`, key = product id)")
    dlq_topic: str = Field("products.dlq", min_length=1,
                           description="dead letters: the original bytes and key with error headers")
    auto_offset_reset: OffsetReset = Field("earliest", description="where a new group starts (librdkafka's "
                                           "values: `earliest`, `latest`, `error`, or their aliases)")
    max_poll_interval_ms: int = Field(300_000, ge=1, description="librdkafka `max.poll.interval.ms`")
    drain_timeout_s: float = Field(30.0, gt=0, description="the longest a drain (on revoke, on lost partitions, at "
                                   "stop) may wait for batches in flight; past it, or when the inference thread is "
                                   "gone, the service exits 1 without committing them")
    commit_timeout_s: float = Field(15.0, gt=0, description="at-least-once: the longest one offset commit may take, "
                                    "retries included; past it the service exits 1 (those events are redelivered)")
    transaction_timeout_s: float = Field(15.0, gt=0, description="exactly-once: the longest each transactional step "
                                         "(delivering a transaction's records, sending its offsets, committing it) "
                                         "may take, retries included; past it the service exits 1 without committing")
    kafka_options: dict[str, str] = Field(
        default_factory=dict, description="librdkafka options passed through unchanged (security.protocol, sasl.*, "
        "ssl.*); they override the consumer's fetch defaults (`fetch.wait.max.ms` 50, `fetch.min.bytes` 65536) "
        "but not the options the delivery guarantees depend on"
    )

    # Delivery guarantee and group membership (hard-service): exactly_once = a transactional producer
    # committing each batch's records and offsets together; group_instance_id = static membership
    # (librdkafka group.instance.id; empty = dynamic), e.g. the Kubernetes pod name.
    processing_guarantee: Literal["at_least_once", "exactly_once"] = Field(
        "at_least_once", description="`exactly_once`: results, dead letters and offsets of each batch in one "
        "Kafka transaction (docs/delivery-guarantees.md)")
    group_instance_id: str = Field("", description="librdkafka `group.instance.id`: static membership, a restart "
                                   "within `session.timeout.ms` causes no rebalance; in Kubernetes the pod name "
                                   "(empty: dynamic membership)")
    # At-least-once: delivered offsets are committed at most this often, in one commit (0: after every
    # batch); a crash redelivers at most about this long of events. Exactly-once commits with each
    # batch's transaction, whatever this says.
    commit_interval_ms: int = Field(1000, ge=0, description="at-least-once: delivered offsets are committed at "
                                    "most this often, in one commit (0: after every batch); everything delivered "
                                    "is committed before partitions are given up and at shutdown. Exactly-once "
                                    "commits with each batch's transaction")

    # Wire format: Confluent Schema Registry framing when set, Avro single-object encoding otherwise.
    schema_registry_url: str | None = Field(None, description="Confluent Schema Registry framing when set; Avro "
                                            "single-object encoding otherwise")
    schema_registry_options: dict[str, str] = Field(default_factory=dict,
                                                    description="Schema Registry client options (auth, TLS)")

    # Micro-batching
    max_batch_size: int = Field(32, ge=1, description="events per micro-batch (the models see whole batches); "
                                "also the events held per partition (at least 16) before that partition is paused")
    max_batch_wait_ms: int = Field(200, ge=0, description="longest wait to fill a batch while the model is busy "
                                   "(an idle model takes what is waiting at once)")
    pipeline_depth: int = Field(2, ge=1, description="batches queued for inference behind the one being inferred "
                                "(also the image-fetch pool: depth + 1 batches); a full queue pauses no partition "
                                "(polling goes on; a partition is paused once `max_batch_size` of its events are "
                                "held)")

    # Images
    image_fetch_concurrency: int = Field(16, ge=1, description="parallel image downloads (connections at once)")
    image_connect_timeout_s: float = Field(2.0, gt=0, description="per-connect cap within the image deadline")
    image_read_timeout_s: float = Field(5.0, gt=0, description="longest wait for the next byte within the image "
                                        "deadline (rounded up to whole seconds)")
    image_max_bytes: int = Field(10 * 1024 * 1024, ge=1, description="largest image body")
    image_max_pixels: int = Field(40_000_000, ge=1, description="decompression-bomb limit, checked from the header")
    image_allowed_hosts: list[str] = Field(
        default_factory=list,
        description="SSRF allow-list: hosts, IPs or CIDRs fetched even if loopback/private, on any port "
        "(`\"127.0.0.1\"`) or on one port (`\"127.0.0.1:8080\"`, `\"[::1]:8080\"`, `\"img.local:8080\"`)",
    )
    # Image fetch hardening (hard-fetch): one deadline per fetch, bounded decode memory. Ports other than
    # 80/443 are fetched only when an image_allowed_hosts entry covers them ("host" = any port, "host:port").
    image_total_timeout_s: float = Field(5.0, gt=0, description="one deadline per image: DNS, connect, every "
                                         "redirect hop, headers and body")
    image_max_aspect: float = Field(10.0, ge=1, description="longer/shorter side above this: refused as bad_aspect")
    image_decode_budget_pixels: int = Field(
        40_000_000, gt=0, description="pixels being decoded at once across the fetch pool (memory bound)"
    )

    # Models and the KL choice
    artifact_dir: Path | None = Field(None, description="trained model folder, a symlink to one, or a pointer "
                                      "file whose one line names one (relative to the file); default: the newest "
                                      "under `models/artifacts/` by the manifest's `created_at`")
    image_weight: float | None = Field(None, ge=0, le=1, description="weight of the image distribution in the "
                                       "ensemble, the artifact's weighted average or geometric mean (default: "
                                       "the artifact's tuned value)")
    abstain_threshold: float | None = Field(None, ge=0, description="best KL above this: the fallback category "
                                            "(default: the artifact's value, none)")
    fallback_category: str = Field("OTHERS", min_length=1, description="category used when abstaining")

    # Performance (perf): where the models run. auto = LiteRT + XNNPACK when TensorFlow sees no GPU,
    # the TensorFlow graph when it does; see models/engine.py.
    inference_engine: Literal["auto", "tensorflow", "litert", "litert-int8"] = Field(
        "auto", description="`auto`: the TensorFlow graph when TensorFlow sees a GPU; without one LiteRT + XNNPACK, "
        "with the artifact's 8-bit image model where its quantization report accepted it for a CPU with the same "
        "vector extensions; `litert`, `litert-int8` (8-bit image model, fp32 text) or `tensorflow` force one "
        "(models/engine.py)")

    # Human in the loop (hitl): calibrated confidence, review routing, corrections, taxonomy versions.
    review_threshold: float | None = Field(default=None, ge=0.0, le=1.0, description="confidence under this: "
                                           "`needs_review` and a copy on the review topic (default: the artifact "
                                           "calibration's `review_threshold`)")
    review_topic: str | None = Field("products.review", description="results under the review threshold also go "
                                     "here (empty: off)")
    corrections_topic: str | None = Field("products.corrections", description="`CategoryCorrected`, compacted "
                                          "(empty: off)")
    taxonomy_topic: str | None = Field("shelver.taxonomy", description="`TaxonomyPublished`, compacted, one "
                                       "partition (empty: off)")
    corrections_rule: Literal["adapter", "projections"] = Field(
        default="adapter", description="how corrections change the choice: `adapter` fits a per-target shift of "
        "the divergences to them (chosen by training/learning_curve.py); `projections` averages corrected products "
        "into their category's projection (the first rule)")
    corrections_adapter_l2: float = Field(default=1.0, gt=0, description="the adapter's L2 strength; one "
                                          "reviewer moves any margin by at most 4 x reviewer cap / this, in nats")
    corrections_prior_strength: float = Field(default=3.0, gt=0, description="the taxonomy prior's weight k, "
                                              "counted in corrections (chosen by training/learning_curve.py)")
    corrections_reviewer_cap: float = Field(default=20.0, gt=0, description="the most total weight one "
                                            "reviewer's corrections can carry")
    corrections_temperature: float = Field(default=0.3, gt=0, description="power a corrected product's "
                                           "distribution is raised to (then renormalized) before it is averaged "
                                           "into its category; 1 = plain mean")
    corrections_catchup_timeout_s: float = Field(60.0, gt=0, description="at start, longest wait to read corrections "
                                                 "and taxonomy to their end")

    log_level: LogLevel = Field("INFO", description="structlog JSON logs on stderr, one line per batch with "
                                "counts and stage timings")

    # Start-up checks (hard-config): how long `shelver consume` waits for the broker and its topics.
    startup_timeout_s: float = Field(30.0, gt=0, description="how long `shelver consume` waits at start for the "
                                     "broker and its topics before exiting 1")

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, v):
        return v.upper() if isinstance(v, str) else v

    @field_validator("auto_offset_reset", mode="before")
    @classmethod
    def _lower_reset(cls, v):
        return v.lower() if isinstance(v, str) else v

    @field_validator("kafka_options", "schema_registry_options", mode="before")
    @classmethod
    def _options_as_strings(cls, v):
        """librdkafka takes every value as a string; accept JSON numbers and booleans for convenience, except
        for a secret: YAML reads an unquoted `0755123` as the octal number 252499, a silently wrong password."""
        if isinstance(v, dict):
            from consumer.secrets import is_secret_key

            for k, x in v.items():
                if is_secret_key(k) and not isinstance(x, str):
                    raise ValueError(f"{k} must be a quoted string (YAML reads an unquoted value as a number)")
            return {k: (str(x).lower() if isinstance(x, bool) else str(x) if isinstance(x, (int, float)) else x)
                    for k, x in v.items()}
        return v

    @field_validator("schema_registry_options")
    @classmethod
    def _registry_numbers_parse(cls, v: dict):  # the client wants numbers: a bad one fails here, at start-up
        from schemas.wire import registry_numbers

        registry_numbers(v)
        return v

    @field_validator("image_allowed_hosts")
    @classmethod
    def _allow_entries_parse(cls, v: list[str]):  # hard-fetch: a bad "host:port" fails at start-up
        from consumer.adapters.allowlist import AllowRule

        for entry in v:
            AllowRule.parse(entry)
        return v

    @field_validator("artifact_dir")
    @classmethod
    def _artifact_exists(cls, v: Path | None):
        if v is not None:
            try:  # ops-metrics: a symlink or a pointer file naming the folder is accepted too
                target = resolve_artifact_pointer(v)
                shown = v if target == v.resolve() else f"{target} (named by {v})"
                is_dir, has_manifest = target.is_dir(), (target / "manifest.json").is_file()
            except OSError as exc:  # a symlink loop, a name too long, a pointer that is not one
                raise ValueError(f"artifact pointer {v} is unreadable: {exc.strerror or exc}") from None
            if not is_dir:
                raise ValueError(f"folder {shown} does not exist")
            if not has_manifest:
                raise ValueError(f"{shown} has no manifest.json (not a trained artifact folder)")
        return v

    # Operations (ops-metrics): Prometheus /metrics, /startupz, /livez (/healthz), /readyz on one port; model reload.
    metrics_port: int = Field(9464, ge=0, le=65535, description="HTTP port of `/metrics`, `/startupz`, `/livez` "
                              "(`/healthz`), `/readyz` (0: off)")
    metrics_host: str = Field("0.0.0.0", description="address that port binds to (probes and scrapers come from "
                              "outside the container or pod)")
    stats_interval_ms: int = Field(5000, ge=0, description="librdkafka `statistics.interval.ms`: how fresh "
                                   "`shelver_consumer_lag` is (0: no lag metric)")
    liveness_stall_s: float = Field(120.0, gt=0, description="`/livez` (`/healthz`) fails when the main loop, or "
                                    "inference on one batch, makes no progress for this long")
    startup_budget_s: float = Field(180.0, gt=0, description="`/livez` (`/healthz`) fails when the process has been "
                                    "up this long without starting its main loop (a hung model load); `/startupz` "
                                    "answers 200 once the loop runs")
    reload_poll_s: float = Field(5.0, ge=0, description="how often a configured `artifact_dir` pointer is checked "
                                 "for a new target (0: SIGHUP only)")

    # Review console (`shelver review`, consumer/review/): its own consumer group on the review topic.
    review_host: str = Field("127.0.0.1", description="address `shelver review` binds to")
    review_port: int = Field(8090, ge=1, le=65535, description="HTTP port of `shelver review`")
    review_group_id: str = Field("shelver-review", min_length=1, description="consumer group of `shelver review` "
                                 "on the review topic (commits an item only once its correction is delivered)")
    review_password_file: Path | None = Field(None, description="reviewers and their salted scrypt password hashes "
                                              "for HTTP basic auth (`shelver review --add-user NAME`)")
    review_trusted_header: str = Field("", description="request header naming the reviewer, set by a trusted "
                                       "reverse proxy (e.g. `X-Forwarded-User`); when set it replaces basic "
                                       "auth (empty: off)")
    review_lease_s: float = Field(300.0, gt=0, description="how long an item shown to a reviewer is kept from "
                                  "the others without a decision")
    review_max_items: int = Field(200, ge=1, description="review items one `shelver review` holds before it "
                                  "pauses reading")
    review_dashboard_max_products: int = Field(100_000, ge=1, description="reviewed products the dashboard keeps "
                                               "in memory, newest first (older ones leave its numbers)")
    review_public_origin: str = Field("", description="the origin reviewers' browsers open the console at, "
                                      "`scheme://host[:port]` (e.g. `https://review.example.com`), for a reverse "
                                      "proxy that rewrites `Host`: a POST's `Origin` must be it (empty: the "
                                      "request's `Host`)")

    @field_validator("review_public_origin")
    @classmethod
    def _origin_form(cls, v: str):
        from urllib.parse import urlsplit

        parts = urlsplit(v.strip())
        if v and (parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/")
                  or parts.query or parts.fragment or "@" in parts.netloc):
            raise ValueError("not an origin: scheme://host[:port], no user info, nothing after it")
        return f"{parts.scheme}://{parts.netloc}".lower() if v else ""

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings):
        return (init_settings, env_settings, *_file_sources(settings_cls), file_secret_settings)

    def resolved_artifact_dir(self) -> Path:
        """SHELVER_ARTIFACT_DIR (a folder, a symlink to one, or a pointer file naming one), else the
        newest artifact by its manifest's ``created_at`` (folder names do not sort by age)."""
        if self.artifact_dir is not None:
            return resolve_artifact_pointer(Path(self.artifact_dir))
        return newest_artifact(DEFAULT_ARTIFACTS)

    def kafka_common(self) -> dict[str, str]:
        """librdkafka config shared by consumers, producers and the admin client."""
        return {"bootstrap.servers": self.bootstrap_servers, **self.kafka_options}

    def redacted(self) -> dict[str, Any]:
        """Settings as a dict safe to log: secret options masked, user info removed from URLs."""
        data = self.model_dump(mode="json")
        for section in ("kafka_options", "schema_registry_options"):
            data[section] = mask_options(data[section])
        for key in ("schema_registry_url", "bootstrap_servers"):
            data[key] = mask_url(data[key])
        return data

    def secret_values(self) -> list[str]:
        """Every credential string in these settings (for the log scrubber), longest first."""
        found: set[str] = set()
        for options in (self.kafka_options, self.schema_registry_options):
            for k, v in options.items():
                if is_secret_key(k) and v:
                    found.add(v)
                    if "user.info" in k.lower() and ":" in v:  # user:password → the password alone too
                        found.add(v.split(":", 1)[1])
                if isinstance(v, str):
                    found.update(userinfo_secrets(v))
        for text in (self.schema_registry_url, self.bootstrap_servers):
            found.update(userinfo_secrets(text or ""))
        return sorted((s for s in found if len(s) >= 3), key=len, reverse=True)


def _origin(field: str) -> str:
    """Where a field's value came from, for the error line: its env var, else the config file key."""
    env = ENV_PREFIX + field.upper()
    if any(k.upper() == env for k in os.environ):
        return env
    path = _config_file()
    return f"{field} (in {path})" if path else field


_NO_ECHO = ("artifact_dir", "kafka_options", "schema_registry_options", "schema_registry_url", "bootstrap_servers",
            "review_public_origin")


def describe_validation_error(exc: ValidationError) -> str:
    """One line naming each bad setting, where it came from and why (values echoed only when not secret-bearing)."""
    parts = []
    for e in exc.errors():
        field = str(e["loc"][0]) if e["loc"] else "settings"
        if e["type"] == "extra_forbidden":
            parts.append(f"unknown setting {_with_suggestion(field, set(Settings.model_fields))}")
            continue
        msg = e["msg"].removeprefix("Value error, ")
        sub = ".".join(map(str, e["loc"][1:]))
        where = _origin(field) + (f"[{sub}]" if sub else "")
        value = e.get("input")
        echo = field not in _NO_ECHO and isinstance(value, (str, int, float)) and not isinstance(value, bool)
        parts.append(f"{where}: {msg}" + (f" (got {value!r})" if echo else ""))
    return "; ".join(parts)


def _json_env_problems() -> list[str]:
    """Malformed JSON in the dict/list env vars, described without echoing the (possibly secret) value."""
    problems = []
    upper = {k.upper(): v for k, v in os.environ.items()}
    for field in ("kafka_options", "schema_registry_options", "image_allowed_hosts"):
        raw = upper.get(ENV_PREFIX + field.upper())
        if raw is None:
            continue
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            problems.append(f"{ENV_PREFIX}{field.upper()} is not valid JSON ({exc.msg} at character {exc.pos})")
            continue
        want = list if field == "image_allowed_hosts" else dict
        if not isinstance(value, want):
            problems.append(f"{ENV_PREFIX}{field.upper()} must be a JSON {'array' if want is list else 'object'}")
    return problems


def load_settings(**overrides: Any) -> Settings:
    """`Settings` from the environment and config file, or a `ConfigError` with one line saying what is wrong."""
    problems = _json_env_problems()
    if problems:
        raise ConfigError("; ".join(problems))
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from None
    except SettingsError as exc:  # a value pydantic-settings could not parse at all
        raise ConfigError(str(exc)) from None


def unknown_env_vars(environ: Mapping[str, str] | None = None) -> list[str]:
    """``SHELVER_*`` variables that are neither settings nor known script/test variables (likely typos)."""
    environ = os.environ if environ is None else environ
    fields = {ENV_PREFIX + f.upper() for f in Settings.model_fields}
    out = []
    for name in environ:
        up = name.upper()
        if not up.startswith(ENV_PREFIX) or up.split("__")[0] in fields or up in NON_SETTING_ENV:
            continue
        if up.startswith(NON_SETTING_ENV_PREFIXES):
            continue
        close = difflib.get_close_matches(up, sorted(fields), n=1, cutoff=0.8)
        out.append(name + (f" (did you mean {close[0]}?)" if close else ""))
    return sorted(out)


__all__ = ["Settings", "REPO_ROOT", "ConfigError", "load_settings", "unknown_env_vars", "mask_url", "mask_options",
           "newest_artifact"]
