"""``shelver doctor`` and ``shelver --version``: the pure verdict rules, then the real command
against the session broker and the committed artifact."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from consumer.cli import doctor
from consumer.cli import main
from consumer.cli.doctor import FAIL, OK, WARN, Check

ROOT = Path(__file__).resolve().parent.parent


def rows(output: str) -> dict[str, tuple[str, str]]:
    """The doctor table as check name → (verdict, detail)."""
    table = {}
    for line in output.splitlines()[2:]:
        parts = [p for p in line.split("  ") if p.strip()]
        if len(parts) >= 2 and parts[1].strip() in (OK, WARN, FAIL):
            table[parts[0].strip()] = (parts[1].strip(), "  ".join(parts[2:]).strip())
    return table


# ---- pure rules ----------------------------------------------------------------------------------


def test_topics_missing_or_in_error_fail_and_a_disabled_replay_topic_is_fine():
    checks = doctor.check_topics({"input": "in", "replay": None, "output": "out", "dead letters": "dlq"},
                                 {"in": 6, "out": "Broker: Topic authorization failed"})
    verdicts = {c.name: c.verdict for c in checks}
    assert verdicts == {"topic input": OK, "topic replay": OK, "topic output": FAIL, "topic dead letters": FAIL}
    assert "6 partitions" in checks[0].detail and "does not exist" in checks[3].detail
    assert doctor.exit_code(checks) == 1 and doctor.exit_code(checks[:2]) == 0


def test_one_start_up_rule_requires_the_review_topic_only_when_results_are_routed_there():
    from consumer.adapters.admin import core_topics
    from consumer.config import Settings
    from consumer.startup import extra_topics, required_topics

    s = Settings(review_threshold=None)
    core = {"input": s.input_topic, "replay": s.replay_topic, "output": s.output_topic, "dead letters": s.dlq_topic}
    assert required_topics(s, None) == core  # uncalibrated, no threshold: no reviews, no review topic
    assert [t for t in core.values() if t] == core_topics(s)
    assert required_topics(s, 0.7) == {**core, "review": s.review_topic}  # a calibrated artifact's default
    assert required_topics(Settings(review_threshold=0.5), None)["review"] == s.review_topic  # the setting
    assert "review" not in required_topics(Settings(review_topic=""), 0.7)  # reviews switched off
    assert extra_topics(s, 0.7) == [s.review_topic] and extra_topics(s, None) == []


def test_doctor_masks_the_credentials_in_the_bootstrap_servers(monkeypatch, capsys):
    monkeypatch.setenv("SHELVER_BOOTSTRAP_SERVERS", "PLAINTEXT://shelver:s3cret-pw@127.0.0.1:1")
    assert main(["doctor", "--skip-artifact", "--timeout", "1"]) == 1
    captured = capsys.readouterr()
    assert "s3cret-pw" not in captured.out + captured.err
    assert rows(captured.out)["broker"][1].startswith("PLAINTEXT://***@127.0.0.1:1")


def test_doctor_fails_on_a_schema_registry_that_does_not_answer_as_consume_does(monkeypatch, capsys):
    monkeypatch.setenv("SHELVER_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    monkeypatch.setenv("SHELVER_SCHEMA_REGISTRY_URL", "http://reg-user:reg-pw-9a9a@127.0.0.1:1")
    assert main(["doctor", "--skip-artifact", "--timeout", "1"]) == 1
    captured = capsys.readouterr()
    verdict, detail = rows(captured.out)["schema registry"]
    assert verdict == FAIL and "http://***@127.0.0.1:1 not answering" in detail
    assert "reg-pw-9a9a" not in captured.out + captured.err


def test_a_client_option_librdkafka_refuses_is_a_failed_broker_line_not_a_traceback(monkeypatch, capsys):
    monkeypatch.setenv("SHELVER_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    monkeypatch.setenv("SHELVER_KAFKA_OPTIONS", '{"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "BOGUS"}')
    assert main(["doctor", "--skip-artifact", "--timeout", "1"]) == 1  # before: KafkaException, no table
    table = rows(capsys.readouterr().out)
    assert table["broker"][0] == FAIL and "Unsupported SASL mechanism" in table["broker"][1]
    assert table["topic input"] == (FAIL, "products.new: not checked, broker unreachable")


@pytest.mark.parametrize("timeout", ["-1", "0", "inf", "soon"])
def test_a_timeout_that_is_not_a_positive_number_of_seconds_is_refused(timeout, capsys):
    # librdkafka reads a negative timeout as "wait for ever": before, `doctor --timeout -1` hung on a dead broker.
    with pytest.raises(SystemExit) as exit_:
        main(["doctor", "--skip-artifact", "--timeout", timeout])
    assert exit_.value.code == 2 and "is not a positive number of seconds" in capsys.readouterr().err


@pytest.mark.slow  # imports TensorFlow
def test_the_artifact_is_checked_with_the_configured_inference_engine(monkeypatch):
    from consumer.config import load_settings

    monkeypatch.setenv("SHELVER_ARTIFACT_DIR", str(Path(__file__).parents[1] / "models/artifacts/v2-20261124"))
    monkeypatch.setenv("SHELVER_INFERENCE_ENGINE", "litert-int8")  # v2 has no 8-bit image model: consume refuses
    (artifact, *_) = doctor.check_artifact(load_settings())
    assert artifact.verdict == FAIL and "int8" in artifact.detail  # before: OK, then consume refused to start


def test_label_space_check_names_each_disagreement():
    labels, targets = ["a", "b", "c"], ["X", "OTHERS"]
    good = doctor.check_label_space(labels, labels, 3, (2, 3), targets, targets, "OTHERS")
    assert good.verdict == OK
    bad = doctor.check_label_space(labels, ["a", "b"], 4, (2, 2), targets, ["X", "Y"], "MISC")
    assert bad.verdict == FAIL
    for phrase in ("text model labels", "4 outputs for 3 labels", "projections are 2x2", "taxonomy", "'MISC'"):
        assert phrase in bad.detail


def test_allow_list_rejects_garbage_and_warns_about_wide_or_useless_entries():
    assert doctor.check_allow_list([]).verdict == OK
    assert doctor.check_allow_list(["127.0.0.1", "10.1.0.0/16", "images.internal"]).verdict == OK
    assert doctor.check_allow_list(["127.0.0.1:8080", "[::1]:8080", "images.internal:8080"]).verdict == OK
    assert doctor.check_allow_list(["http://images.internal/"]).verdict == FAIL
    assert doctor.check_allow_list(["images internal"]).verdict == FAIL
    wide = doctor.check_allow_list(["0.0.0.0/0"])
    assert wide.verdict == WARN and "0.0.0.0/0" in wide.detail
    assert doctor.check_allow_list(["169.254.169.254"]).verdict == WARN


def test_allow_listing_any_address_the_fetcher_always_refuses_is_warned_as_useless():
    """The doctor reads the fetcher's own list (it had its own copy, which missed Azure's wire server)."""
    from consumer.adapters.images import METADATA_ADDRESSES

    for ip in sorted(map(str, METADATA_ADDRESSES)):
        check = doctor.check_allow_list([ip])
        assert check.verdict == WARN and "metadata addresses stay refused" in check.detail, ip
    assert "168.63.129.16" in {str(ip) for ip in METADATA_ADDRESSES}


def test_table_has_one_line_per_check():
    text = doctor.format_table([Check("broker", OK, "x"), Check("topic input", FAIL, "y")])
    assert rows(text) == {"broker": (OK, "x"), "topic input": (FAIL, "y")}


def wait_for_leaders(bootstrap: str, topics: list[str], timeout_s: float = 30.0) -> None:
    """A just-created topic reports LEADER_NOT_AVAILABLE until its partitions have leaders."""
    import time

    admin, deadline = AdminClient({"bootstrap.servers": bootstrap}), time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        meta = admin.list_topics(timeout=10).topics
        if all(t in meta and meta[t].error is None and all(p.leader >= 0 for p in meta[t].partitions.values())
               for t in topics):
            return
    raise TimeoutError(f"topics without leaders after {timeout_s}s: {topics}")


# ---- the command -------------------------------------------------------------------------------------


def test_version_prints_the_package_and_the_artifact(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("shelver ") and "artifact v5-20261204" in out  # the newest committed one


def test_bad_configuration_is_a_failed_line_not_a_traceback(monkeypatch, capsys):
    monkeypatch.setenv("SHELVER_MAX_BATCH_SIZE", "many")
    assert main(["doctor", "--skip-artifact", "--timeout", "1"]) == 1
    assert rows(capsys.readouterr().out)["configuration"][0] == FAIL


@pytest.mark.kafka
def test_missing_topic_fails_its_line_and_the_exit_status(kafka_bootstrap, topic_factory, monkeypatch, capsys):
    monkeypatch.setenv("SHELVER_BOOTSTRAP_SERVERS", kafka_bootstrap)
    monkeypatch.setenv("SHELVER_INPUT_TOPIC", topic_factory(partitions=3, prefix="doctor-in"))
    monkeypatch.setenv("SHELVER_REPLAY_TOPIC", topic_factory(partitions=1, prefix="doctor-replay"))
    monkeypatch.setenv("SHELVER_OUTPUT_TOPIC", topic_factory(partitions=3, prefix="doctor-out"))
    monkeypatch.setenv("SHELVER_DLQ_TOPIC", "doctor-dlq-never-created")
    # The committed artifact is calibrated: consume copies unsure results to the review topic, so it is required.
    monkeypatch.setenv("SHELVER_REVIEW_TOPIC", topic_factory(partitions=1, prefix="doctor-review"))
    wait_for_leaders(kafka_bootstrap, [os.environ[f"SHELVER_{k}_TOPIC"] for k in ("INPUT", "REPLAY", "OUTPUT", "REVIEW")])
    assert main(["doctor", "--skip-artifact"]) == 1
    table = rows(capsys.readouterr().out)
    assert table["topic dead letters"][0] == FAIL and "doctor-dlq-never-created" in table["topic dead letters"][1]
    assert {name: v for name, (v, _) in table.items() if name != "topic dead letters"} == {
        "configuration": OK, "broker": OK, "topic input": OK, "topic replay": OK, "topic output": OK,
        "topic review": OK, "schema registry": OK, "image allow-list": OK}
    assert "3 partitions" in table["topic input"][1]


@pytest.mark.kafka
@pytest.mark.slow
def test_all_checks_pass_against_a_ready_broker_and_the_committed_artifact(kafka_bootstrap, topic_factory):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SHELVER_BOOTSTRAP_SERVERS": kafka_bootstrap,
           "SHELVER_INPUT_TOPIC": topic_factory(prefix="doctor-in"), "SHELVER_REPLAY_TOPIC": topic_factory(prefix="doctor-re"),
           "SHELVER_OUTPUT_TOPIC": topic_factory(prefix="doctor-out"), "SHELVER_DLQ_TOPIC": topic_factory(prefix="doctor-dlq"),
           "SHELVER_REVIEW_TOPIC": topic_factory(prefix="doctor-review"),  # the calibrated artifact routes reviews
           "SHELVER_IMAGE_ALLOWED_HOSTS": '["127.0.0.1"]'}
    wait_for_leaders(kafka_bootstrap, [env[f"SHELVER_{k}_TOPIC"] for k in ("INPUT", "REPLAY", "OUTPUT", "DLQ", "REVIEW")])
    out = subprocess.run([sys.executable, "-m", "consumer.cli", "doctor"], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    table = rows(out.stdout)
    assert out.returncode == 0, out.stdout + out.stderr[-2000:]
    assert set(table) == {"configuration", "broker", "topic input", "topic replay", "topic output",
                          "topic dead letters", "topic review", "schema registry", "artifact", "label space", "image allow-list", "device"}
    assert all(verdict == OK for verdict, _ in table.values()), out.stdout
    assert "93 source labels -> 12 categories" in table["label space"][1]


def test_train_on_a_runtime_only_install_says_which_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # as if `pip install shelver` without [train]
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--help"])
    assert "pip install 'shelver[train]'" in str(exit_.value.code) and "pandas" in str(exit_.value.code)


@pytest.mark.kafka
def test_doctor_fails_on_a_missing_review_topic_exactly_when_consume_refuses_to_start(
        kafka_bootstrap, topic_factory, monkeypatch, capsys):
    """Before, the doctor checked four topics and passed while `shelver consume` exited 1 on the fifth."""
    monkeypatch.setenv("SHELVER_BOOTSTRAP_SERVERS", kafka_bootstrap)
    for key, prefix in (("INPUT", "one-in"), ("REPLAY", "one-re"), ("OUTPUT", "one-out"), ("DLQ", "one-dlq")):
        monkeypatch.setenv(f"SHELVER_{key}_TOPIC", topic_factory(partitions=1, prefix=prefix))
    monkeypatch.setenv("SHELVER_REVIEW_TOPIC", "one-review-never-created")
    monkeypatch.setenv("SHELVER_REVIEW_THRESHOLD", "0.5")
    monkeypatch.setenv("SHELVER_STARTUP_TIMEOUT_S", "2")
    wait_for_leaders(kafka_bootstrap, [os.environ[f"SHELVER_{k}_TOPIC"] for k in ("INPUT", "REPLAY", "OUTPUT", "DLQ")])
    assert main(["doctor", "--skip-artifact"]) == 1
    table = rows(capsys.readouterr().out)
    assert table["topic review"][0] == FAIL and "one-review-never-created" in table["topic review"][1]
    loaded = []
    assert main(["consume"], load_categorizer=lambda s: loaded.append(s)) == 1  # refused before loading models
    assert "one-review-never-created" in capsys.readouterr().err and not loaded
    monkeypatch.setenv("SHELVER_REVIEW_TOPIC", "")  # reviews off: neither requires it
    assert main(["doctor", "--skip-artifact"]) == 0
    assert "topic review" not in rows(capsys.readouterr().out)
