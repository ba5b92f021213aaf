"""`shelver consume` start-up as a process (issue #6 items 5, 6): bad settings, an unreachable broker
and missing topics end with one clear line and a non-zero exit before the models load; secrets never
reach the log."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
# `shelver consume` (the console script's function), reporting on exit whether TensorFlow was ever imported.
RUN_CONSUME = (
    "import atexit, sys\n"
    "atexit.register(lambda: print('tensorflow imported:', 'tensorflow' in sys.modules))\n"
    "from consumer.cli import main\n"
    "sys.exit(main(['consume', *sys.argv[1:]]))\n"
)


def consume(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.upper().startswith("SHELVER_") or "_TEST_" in k.upper()}
    return subprocess.run([sys.executable, "-c", RUN_CONSUME, *args], env={**clean, **env},
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("env, expected", [
    ({"SHELVER_PIPELINE_DEPTH": "0"}, "SHELVER_PIPELINE_DEPTH: Input should be greater than or equal to 1"),
    ({"SHELVER_MAX_BATCH_SIZE": "0"}, "SHELVER_MAX_BATCH_SIZE: Input should be greater than or equal to 1"),
    ({"SHELVER_KAFKA_OPTIONS": '{"sasl.password": "hunter2"'}, "SHELVER_KAFKA_OPTIONS is not valid JSON"),
    ({"SHELVER_KAFKA_OPTIONS": '{"no.such.option": "1"}'}, 'No such configuration property: "no.such.option"'),
    ({"SHELVER_ARTIFACT_DIR": "/nonexistent/artifact"}, "SHELVER_ARTIFACT_DIR: folder /nonexistent/artifact does not exist"),
    ({"SHELVER_ARTIFACT_DIR": str(TESTS)}, "has no manifest.json"),
    ({"SHELVER_AUTO_OFFSET_RESET": "oldest"}, "SHELVER_AUTO_OFFSET_RESET: Input should be"),
    ({"SHELVER_LOG_LEVEL": "verbose"}, "SHELVER_LOG_LEVEL: Input should be"),
], ids=["depth0", "batch0", "bad-json", "unknown-librdkafka-option", "no-artifact", "no-manifest", "offset-reset",
        "log-level"])
def test_bad_configuration_exits_2_with_one_line_before_the_models_load(env, expected):
    # The broker address is unreachable on purpose: configuration must be refused before any connection.
    proc = consume({"SHELVER_BOOTSTRAP_SERVERS": "127.0.0.1:1", "SHELVER_STARTUP_TIMEOUT_S": "60", **env})
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("shelver: configuration error: ") and expected in lines[0], lines
    assert "hunter2" not in proc.stderr
    assert proc.stdout.strip() == "tensorflow imported: False"


def test_config_file_with_an_unknown_key_exits_2(tmp_path):
    path = tmp_path / "shelver.yaml"
    path.write_text("input_topic: products.new\npipline_depth: 4\n")
    proc = consume({"SHELVER_CONFIG_FILE": str(path)})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"shelver: configuration error: config file {path}: unknown setting(s) 'pipline_depth' "
        "(did you mean 'pipeline_depth'?)"
    ]
    assert proc.stdout.strip() == "tensorflow imported: False"


def test_unreachable_broker_ends_with_a_clear_line_after_the_startup_timeout():
    proc = consume({"SHELVER_BOOTSTRAP_SERVERS": "127.0.0.1:1", "SHELVER_STARTUP_TIMEOUT_S": "2"})
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("shelver: start-up check failed: Kafka at 127.0.0.1:1 not reachable within 2 s")
    assert "Connection refused" in lines[0]
    assert proc.stdout.strip() == "tensorflow imported: False"


@pytest.mark.kafka
def test_missing_topic_on_the_real_broker_is_named(kafka_bootstrap, topic_factory):
    missing = f"absent.{uuid.uuid4().hex[:8]}"
    env = {
        "SHELVER_BOOTSTRAP_SERVERS": kafka_bootstrap, "SHELVER_STARTUP_TIMEOUT_S": "2",
        "SHELVER_INPUT_TOPIC": topic_factory(1, "in"), "SHELVER_REPLAY_TOPIC": "",
        "SHELVER_OUTPUT_TOPIC": topic_factory(1, "out"), "SHELVER_DLQ_TOPIC": missing,
    }
    proc = consume(env)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"shelver: start-up check failed: topic(s) missing on {kafka_bootstrap}: {missing} ")
    assert proc.stdout.strip() == "tensorflow imported: False"


SECRETS = {
    "sasl.password": "sasl-pw-5c1f", "ssl.key.password": "ssl-keypw-77aa",
    "sasl.oauthbearer.client.secret": "oauth-cs-91b2",
}


@pytest.mark.kafka
@pytest.mark.registry
@pytest.mark.slow
@pytest.mark.parametrize("registry", ["basic-auth-option", "url-user-info"])
def test_no_secret_appears_in_the_real_log_output(kafka_bootstrap, topic_factory, schema_registry, registry):
    """The whole stderr of a real start (starting line included, at DEBUG) holds none of the credentials.
    The registry is a real one (it must answer at start), which ignores the credentials."""
    env = {
        "SHELVER_BOOTSTRAP_SERVERS": kafka_bootstrap, "SHELVER_LOG_LEVEL": "DEBUG",
        "SHELVER_INPUT_TOPIC": topic_factory(1, "in"), "SHELVER_REPLAY_TOPIC": "",
        "SHELVER_OUTPUT_TOPIC": topic_factory(1, "out"), "SHELVER_DLQ_TOPIC": topic_factory(1, "dlq"),
        "SHELVER_GROUP_ID": f"secrets-{uuid.uuid4().hex[:8]}",
        # sasl.* and ssl.* are inert on a PLAINTEXT connection, so the real broker still accepts us.
        "SHELVER_KAFKA_OPTIONS": json.dumps(SECRETS),
    }
    if registry == "basic-auth-option":
        env["SHELVER_SCHEMA_REGISTRY_URL"] = schema_registry
        env["SHELVER_SCHEMA_REGISTRY_OPTIONS"] = json.dumps({"basic.auth.user.info": "reg-user:reg-pw-3d4e"})
        secrets = [*SECRETS.values(), "reg-pw-3d4e"]
    else:
        env["SHELVER_SCHEMA_REGISTRY_URL"] = schema_registry.replace("http://", "http://reg-user:reg-url-pw-8f8f@")
        secrets = [*SECRETS.values(), "reg-url-pw-8f8f"]
    proc = subprocess.run(
        [sys.executable, str(TESTS / "consumer_main.py"), "consume", "--idle-exit-seconds", "1"],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    starting = [json.loads(line) for line in proc.stderr.splitlines() if '"event": "starting"' in line]
    assert len(starting) == 1  # the line that used to print the registry credential
    assert starting[0]["settings"]["kafka_options"]["sasl.password"] == "***"
    for secret in secrets:
        assert secret not in proc.stderr + proc.stdout


@pytest.mark.kafka
@pytest.mark.slow
def test_damaged_artifact_ends_with_one_log_line_and_exit_1(kafka_bootstrap, topic_factory, tmp_path):
    (tmp_path / "manifest.json").write_text("{}")  # passes the cheap check, fails while loading
    env = {
        "SHELVER_BOOTSTRAP_SERVERS": kafka_bootstrap, "SHELVER_ARTIFACT_DIR": str(tmp_path),
        "SHELVER_INPUT_TOPIC": topic_factory(1, "in"), "SHELVER_REPLAY_TOPIC": "",
        "SHELVER_OUTPUT_TOPIC": topic_factory(1, "out"), "SHELVER_DLQ_TOPIC": topic_factory(1, "dlq"),
    }
    proc = consume(env)
    assert proc.returncode == 1
    errors = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    assert [e["event"] for e in errors if e["level"] == "error"] == ["models could not be loaded"]
    assert "KeyError" in errors[-1]["error"]
    assert "Traceback" not in "\n".join(line for line in proc.stderr.splitlines() if not line.startswith("{"))
