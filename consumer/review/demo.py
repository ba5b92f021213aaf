"""The whole human-in-the-loop on this machine: ``.venv/bin/python -m consumer.review.demo``.

Starts a fresh local Kafka broker (port 29093 unless SHELVER_DEMO_KAFKA_PORT), creates the topics,
starts ``shelver consume`` with the committed models and a high review threshold (so most sample
products go to review), publishes ``SHELVER_DEMO_COUNT`` (40) sample products of the catalogue with
their images served over local HTTP, writes a password file with the reviewer ``demo`` (password
``demo``), and serves ``shelver review`` on http://127.0.0.1:8090 until Ctrl-C, when it stops
everything. Reviewed decisions reach the running consumer: the ``taxonomy_version`` of later results
(``shelver show``, or the dashboard) gains ``+c<count>``.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from consumer.review.auth import add_user
from models.paths import PACKAGE_PREFIX, REPO_ROOT


def main() -> int:
    port = os.environ.get("SHELVER_DEMO_KAFKA_PORT", "29093")
    count = os.environ.get("SHELVER_DEMO_COUNT", "40")
    state = REPO_ROOT / ".kafka" / f"review-demo-{port}"
    kafka_local = str(REPO_ROOT / "scripts" / "kafka-local")
    env = {**os.environ, "KAFKA_PORT": port, "KAFKA_STATE_DIR": str(state),
           "SHELVER_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}", "SHELVER_IMAGE_ALLOWED_HOSTS": '["127.0.0.1"]',
           "SHELVER_GROUP_ID": "shelver-review-demo", "SHELVER_REVIEW_THRESHOLD": os.environ.get(
               "SHELVER_REVIEW_THRESHOLD", "0.99"), "SHELVER_METRICS_PORT": "0"}
    passwords = Path(state.parent / f"review-demo-{port}.reviewers")
    env["SHELVER_REVIEW_PASSWORD_FILE"] = str(passwords)
    shelver = [sys.executable, "-m", f"{PACKAGE_PREFIX}consumer.cli"]
    logs = REPO_ROOT / ".kafka" / "review-demo-logs"
    children: list[subprocess.Popen] = []

    def stop(*_):
        for child in reversed(children):
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in reversed(children):
            try:
                child.wait(30)
            except subprocess.TimeoutExpired:
                child.kill()
        subprocess.run([kafka_local, "stop"], env=env, capture_output=True)

    if not Path(kafka_local).is_file():
        print("review demo: needs a checkout of the repository (scripts/kafka-local)", file=sys.stderr)
        return 2
    subprocess.run([kafka_local, "stop"], env=env, capture_output=True)
    shutil.rmtree(state, ignore_errors=True)
    logs.mkdir(parents=True, exist_ok=True)
    try:
        print(f"== starting Kafka on 127.0.0.1:{port}", flush=True)
        subprocess.run([kafka_local, "start"], env=env, check=True)
        subprocess.run([kafka_local, "create-topics"], env=env, check=True)
        add_user(passwords, "demo", "demo")
        print(f"== starting shelver consume (logs: {logs}/consumer.log)", flush=True)
        children.append(subprocess.Popen([*shelver, "consume"], env=env, cwd=REPO_ROOT,
                                         stdout=open(logs / "consumer.log", "w"), stderr=subprocess.STDOUT))
        print(f"== publishing {count} sample products (images served over local HTTP)", flush=True)
        children.append(subprocess.Popen([*shelver, "produce-sample", "--count", count, "--serve-seconds", "86400"],
                                         env=env, cwd=REPO_ROOT, stdout=open(logs / "producer.log", "w"),
                                         stderr=subprocess.STDOUT))
        print("== review console: http://127.0.0.1:8090  (reviewer demo, password demo); Ctrl-C stops everything",
              flush=True)
        review = subprocess.Popen([*shelver, "review"], env=env, cwd=REPO_ROOT)
        children.append(review)
        signal.signal(signal.SIGTERM, lambda *_: review.send_signal(signal.SIGTERM))
        try:
            return review.wait()
        except KeyboardInterrupt:
            return 0
    finally:
        stop()


if __name__ == "__main__":
    sys.exit(main())
