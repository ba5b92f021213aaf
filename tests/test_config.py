"""Strict settings (issue #6 item 5) and secret masking (item 6): the pure parts, in process."""
from __future__ import annotations

import json

import pytest

from consumer.config import ConfigError, Settings, load_settings, mask_url, unknown_env_vars
from consumer.logs import Scrubber


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """Only the variables a test sets: a developer's own SHELVER_* must not change the outcome."""
    import os

    for name in list(os.environ):
        if name.upper().startswith("SHELVER_") and not name.upper().startswith("SHELVER_TEST_"):
            monkeypatch.delenv(name)


@pytest.mark.parametrize("env, expected", [
    ({"SHELVER_PIPELINE_DEPTH": "0"}, "SHELVER_PIPELINE_DEPTH: Input should be greater than or equal to 1"),
    ({"SHELVER_MAX_BATCH_SIZE": "0"}, "SHELVER_MAX_BATCH_SIZE: Input should be greater than or equal to 1"),
    ({"SHELVER_MAX_BATCH_WAIT_MS": "-1"}, "SHELVER_MAX_BATCH_WAIT_MS: Input should be greater than or equal to 0"),
    ({"SHELVER_IMAGE_READ_TIMEOUT_S": "0"}, "SHELVER_IMAGE_READ_TIMEOUT_S: Input should be greater than 0"),
    ({"SHELVER_STARTUP_TIMEOUT_S": "0"}, "SHELVER_STARTUP_TIMEOUT_S: Input should be greater than 0"),
    ({"SHELVER_IMAGE_WEIGHT": "1.5"}, "SHELVER_IMAGE_WEIGHT: Input should be less than or equal to 1"),
    ({"SHELVER_AUTO_OFFSET_RESET": "oldest"}, "SHELVER_AUTO_OFFSET_RESET: Input should be 'earliest'"),
    ({"SHELVER_LOG_LEVEL": "verbose"}, "SHELVER_LOG_LEVEL: Input should be 'DEBUG'"),
    ({"SHELVER_INPUT_TOPIC": ""}, "SHELVER_INPUT_TOPIC: String should have at least 1 character"),
    ({"SHELVER_KAFKA_OPTIONS": '{"sasl.password": "hunter2",'}, "SHELVER_KAFKA_OPTIONS is not valid JSON"),
    ({"SHELVER_KAFKA_OPTIONS": '["a"]'}, "SHELVER_KAFKA_OPTIONS must be a JSON object"),
    ({"SHELVER_IMAGE_ALLOWED_HOSTS": "127.0.0.1"}, "SHELVER_IMAGE_ALLOWED_HOSTS is not valid JSON"),
    ({"SHELVER_ARTIFACT_DIR": "/nonexistent/artifact"}, "SHELVER_ARTIFACT_DIR: folder /nonexistent/artifact does not exist"),
])
def test_bad_values_are_one_line_errors_naming_the_variable(monkeypatch, env, expected):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert expected in str(err.value)
    assert "\n" not in str(err.value)
    assert "hunter2" not in str(err.value)


def test_artifact_folder_without_manifest_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("SHELVER_ARTIFACT_DIR", str(tmp_path))
    with pytest.raises(ConfigError, match="has no manifest.json"):
        load_settings()


def test_several_problems_are_reported_together_on_one_line(monkeypatch):
    monkeypatch.setenv("SHELVER_PIPELINE_DEPTH", "0")
    monkeypatch.setenv("SHELVER_LOG_LEVEL", "loud")
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert "SHELVER_PIPELINE_DEPTH" in str(err.value) and "SHELVER_LOG_LEVEL" in str(err.value)
    assert "\n" not in str(err.value)


def test_enum_values_are_case_insensitive_and_options_accept_json_scalars(monkeypatch):
    monkeypatch.setenv("SHELVER_LOG_LEVEL", "debug")
    monkeypatch.setenv("SHELVER_AUTO_OFFSET_RESET", "Latest")
    monkeypatch.setenv("SHELVER_KAFKA_OPTIONS", json.dumps({"session.timeout.ms": 6000, "enable.sasl.oauthbearer.unsecure.jwt": True}))
    s = load_settings()
    assert (s.log_level, s.auto_offset_reset) == ("DEBUG", "latest")
    assert s.kafka_options == {"session.timeout.ms": "6000", "enable.sasl.oauthbearer.unsecure.jwt": "true"}


@pytest.mark.parametrize("suffix, text", [(".yaml", "pipline_depth: 3\n"), (".json", '{"pipline_depth": 3}')])
def test_unknown_key_in_the_config_file_is_an_error_with_a_suggestion(monkeypatch, tmp_path, suffix, text):
    path = tmp_path / f"shelver{suffix}"
    path.write_text(text)
    monkeypatch.setenv("SHELVER_CONFIG_FILE", str(path))
    with pytest.raises(ConfigError, match=r"unknown setting\(s\) 'pipline_depth' \(did you mean 'pipeline_depth'\?\)"):
        load_settings()


def test_config_file_values_are_checked_and_the_environment_overrides_them(monkeypatch, tmp_path):
    path = tmp_path / "shelver.yaml"
    path.write_text("pipeline_depth: 0\nmax_batch_size: 8\n")
    monkeypatch.setenv("SHELVER_CONFIG_FILE", str(path))
    with pytest.raises(ConfigError, match=r"pipeline_depth \(in .*shelver.yaml\): Input should be greater"):
        load_settings()
    monkeypatch.setenv("SHELVER_PIPELINE_DEPTH", "3")
    s = load_settings()
    assert (s.pipeline_depth, s.max_batch_size) == (3, 8)


@pytest.mark.parametrize("text, expected", [
    ("pipeline_depth: [\n", "not valid YAML"),
    ("- 1\n- 2\n", "expected a mapping"),
])
def test_unreadable_config_file_is_a_one_line_error(monkeypatch, tmp_path, text, expected):
    path = tmp_path / "shelver.yaml"
    path.write_text(text)
    monkeypatch.setenv("SHELVER_CONFIG_FILE", str(path))
    with pytest.raises(ConfigError, match=expected) as err:
        load_settings()
    assert "\n" not in str(err.value)


def test_missing_config_file_is_an_error(monkeypatch, tmp_path):
    monkeypatch.setenv("SHELVER_CONFIG_FILE", str(tmp_path / "absent.yaml"))
    with pytest.raises(ConfigError, match="cannot read it"):
        load_settings()


def test_unknown_keyword_setting_is_refused():
    with pytest.raises(ConfigError, match="unknown setting 'pipline_depth' \\(did you mean 'pipeline_depth'\\?\\)"):
        load_settings(pipline_depth=3)


def test_unknown_shelver_env_vars_are_listed_but_script_and_test_variables_are_not():
    env = {
        "SHELVER_PIPELNE_DEPTH": "3", "SHELVER_CONFIG_FILE": "x", "SHELVER_DATA_DIR": "x",
        "SHELVER_MARKETPLACE_DIR": "x", "SHELVER_DEMO_COUNT": "5", "SHELVER_TEST_KAFKA_PORT": "1",
        "SHELVER_MAX_BATCH_SIZE": "4", "shelver_log_level": "info", "SHELVER_KAFKA_OPTIONS__x": "1", "PATH": "/bin",
    }
    assert unknown_env_vars(env) == ["SHELVER_PIPELNE_DEPTH (did you mean SHELVER_PIPELINE_DEPTH?)"]


def test_redacted_masks_credentials_and_url_user_info():
    s = Settings(
        bootstrap_servers="SASL_SSL://kuser:kpass123@broker-a:9093,broker-b:9093",
        schema_registry_url="https://ruser:rpass456@registry:8081",
        schema_registry_options={"basic.auth.user.info": "ruser:rinfo789", "bearer.auth.token": "tok-abc"},
        kafka_options={"sasl.username": "svc", "sasl.password": "sasl-xyz", "ssl.key.password": "kp-1",
                       "ssl.key.pem": "-----BEGIN PRIVATE KEY-----MIIE", "sasl.oauthbearer.client.secret": "cs-2",
                       "sasl.oauthbearer.token.endpoint.url": "https://tuser:tpass@idp/token",
                       "security.protocol": "SASL_SSL"},
    )
    text = json.dumps(s.redacted())
    for secret in ("kpass123", "rpass456", "rinfo789", "tok-abc", "sasl-xyz", "kp-1", "MIIE", "cs-2", "tpass"):
        assert secret not in text
    red = s.redacted()
    assert red["kafka_options"]["sasl.username"] == "svc"  # not a secret: kept for debugging
    assert red["kafka_options"]["security.protocol"] == "SASL_SSL"
    assert red["schema_registry_url"] == "https://***@registry:8081"
    assert red["bootstrap_servers"] == "SASL_SSL://***@broker-a:9093,broker-b:9093"
    assert {"rpass456", "rinfo789", "sasl-xyz", "kpass123", "tpass"} <= set(s.secret_values())


@pytest.mark.parametrize("url, expected", [
    ("http://u:p@h:1/x", "http://***@h:1/x"),
    ("http://h:1/x", "http://h:1/x"),
    ("a:1,u:p@b:2", "a:1,***@b:2"),
    (None, None),
])
def test_mask_url(url, expected):
    assert mask_url(url) == expected


def test_scrubber_masks_raw_and_json_escaped_secrets():
    scrub = Scrubber(['pa"ss', "hunter2"])
    assert scrub('{"error": "login hunter2 failed", "pw": "pa\\"ss"}') == '{"error": "login *** failed", "pw": "***"}'


def test_a_comma_in_a_urls_password_does_not_leave_part_of_it_unmasked():
    # Before: user info stopped at the comma (meant for bootstrap lists), so "svc:Pa" reached the log.
    s = Settings(schema_registry_url="https://svc-shelver:Pa,ssw0rd-42@registry.example.com",
                 bootstrap_servers="kuser:kp1@broker-a:9093,broker-b:9093")
    shown = json.dumps(s.redacted())
    assert "registry.example.com" in shown and "broker-b:9093" in shown
    for secret in ("svc-shelver", "Pa,ssw0rd-42", "Pa,", "kp1"):
        assert secret not in shown
    assert {"Pa,ssw0rd-42", "kp1"} <= set(s.secret_values())
    mixed = Settings(bootstrap_servers="SASL_SSL://h1:9092,svc:pw-77@h2:9092")  # a scheme, then a list
    assert "pw-77" in mixed.secret_values() and "pw-77" not in json.dumps(mixed.redacted())
