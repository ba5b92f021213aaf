"""All configuration in one pydantic-settings object.

Environment variables use the ``SHELVER_`` prefix (nested with ``__``, e.g.
``SHELVER_KAFKA__SECURITY_PROTOCOL``); an optional YAML/JSON file named by
``SHELVER_CONFIG_FILE`` supplies defaults that the environment overrides.
librdkafka options are passed through under their own names via ``kafka_options``
(``SHELVER_KAFKA_OPTIONS='{"security.protocol": "SASL_SSL", ...}'``).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ARTIFACTS = REPO_ROOT / "models" / "artifacts"

_SECRET_KEYS = ("password", "secret", "token", "key.pem", "keystore", "sasl.oauthbearer.config")


class _FileSource(PydanticBaseSettingsSource):
    """Reads the optional config file (YAML or JSON) named by SHELVER_CONFIG_FILE."""

    def get_field_value(self, field, field_name):  # pragma: no cover - unused by pydantic here
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = os.environ.get("SHELVER_CONFIG_FILE")
        if not path:
            return {}
        text = Path(path).read_text()
        data = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
        return data or {}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SHELVER_", env_nested_delimiter="__", extra="ignore")

    # Kafka
    bootstrap_servers: str = "127.0.0.1:9092"
    group_id: str = "shelver"
    input_topic: str = "products.new"
    replay_topic: str | None = "products.replay"
    output_topic: str = "products.categorized"
    dlq_topic: str = "products.dlq"
    auto_offset_reset: str = "earliest"
    max_poll_interval_ms: int = 300_000
    kafka_options: dict[str, str] = Field(
        default_factory=dict, description="librdkafka options passed through unchanged (security.protocol, sasl.*, ssl.*)"
    )

    # Wire format: Confluent Schema Registry framing when set, Avro single-object encoding otherwise.
    schema_registry_url: str | None = None
    schema_registry_options: dict[str, str] = Field(default_factory=dict)

    # Micro-batching
    max_batch_size: int = 32
    max_batch_wait_ms: int = 200
    pipeline_depth: int = 2

    # Images
    image_fetch_concurrency: int = 16
    image_connect_timeout_s: float = 2.0
    image_read_timeout_s: float = 5.0
    image_max_bytes: int = 10 * 1024 * 1024
    image_max_pixels: int = 40_000_000
    image_allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Hosts, IPs or CIDRs that may be fetched even if private/loopback (SSRF allow-list)",
    )

    # Models and the KL choice
    artifact_dir: Path | None = None  # default: newest folder under models/artifacts
    image_weight: float | None = None  # default: the artifact's tuned weight
    abstain_threshold: float | None = None  # default: the artifact's tuned threshold
    fallback_category: str = "OTHERS"

    log_level: str = "INFO"

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings):
        return (init_settings, env_settings, _FileSource(settings_cls), file_secret_settings)

    def resolved_artifact_dir(self) -> Path:
        if self.artifact_dir is not None:
            return Path(self.artifact_dir)
        candidates = sorted(p for p in DEFAULT_ARTIFACTS.iterdir() if (p / "manifest.json").exists())
        if not candidates:
            raise FileNotFoundError(f"no trained artifact under {DEFAULT_ARTIFACTS}; run `shelver train`")
        return candidates[-1]

    def kafka_common(self) -> dict[str, str]:
        """librdkafka config shared by consumers, producers and the admin client."""
        return {"bootstrap.servers": self.bootstrap_servers, **self.kafka_options}

    def redacted(self) -> dict[str, Any]:
        """Settings as a dict safe to log: secrets and secret-looking librdkafka options masked."""
        data = self.model_dump(mode="json")
        for section in ("kafka_options", "schema_registry_options"):
            data[section] = {
                k: ("***" if any(s in k for s in _SECRET_KEYS) else v) for k, v in data[section].items()
            }
        return data


__all__ = ["Settings", "REPO_ROOT"]
