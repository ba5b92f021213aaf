"""How `shelver consume` ends with each bad configuration of issue #6: exit code, seconds, stderr lines.

    PYTHONPATH=<tree> python benchmarks/bad_config.py [--timeout 60] [--bootstrap HOST:PORT --existing-topic T]

Runs the code found on PYTHONPATH (so the same script measures an old checkout). A run still going
after ``--timeout`` seconds is killed and reported as a hang. With ``--bootstrap`` (a live broker)
and ``--existing-topic``, also measures a missing input topic.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

UNREACHABLE = "127.0.0.1:1"


def cases(args, tmp: Path) -> dict[str, dict[str, str]]:
    bad_file = tmp / "shelver.yaml"
    bad_file.write_text("pipline_depth: 4\n")
    out = {
        "SHELVER_PIPELINE_DEPTH=0": {"SHELVER_PIPELINE_DEPTH": "0"},
        "SHELVER_MAX_BATCH_SIZE=0": {"SHELVER_MAX_BATCH_SIZE": "0"},
        "malformed SHELVER_KAFKA_OPTIONS": {"SHELVER_KAFKA_OPTIONS": '{"sasl.password": "x"'},
        "SHELVER_ARTIFACT_DIR missing": {"SHELVER_ARTIFACT_DIR": "/nonexistent/artifact"},
        "SHELVER_ARTIFACT_DIR without manifest": {"SHELVER_ARTIFACT_DIR": str(tmp)},
        "SHELVER_LOG_LEVEL=verbose": {"SHELVER_LOG_LEVEL": "verbose"},
        "SHELVER_AUTO_OFFSET_RESET=oldest": {"SHELVER_AUTO_OFFSET_RESET": "oldest"},
        "unknown key in config file": {"SHELVER_CONFIG_FILE": str(bad_file)},
        "unreachable broker (default start-up timeout)": {"SHELVER_BOOTSTRAP_SERVERS": UNREACHABLE, "_reachable": "1"},
    }
    if args.bootstrap:
        out["missing input topic"] = {"SHELVER_BOOTSTRAP_SERVERS": args.bootstrap, "SHELVER_INPUT_TOPIC": "absent.topic",
                                      "SHELVER_OUTPUT_TOPIC": args.existing_topic, "SHELVER_REPLAY_TOPIC": "",
                                      "SHELVER_DLQ_TOPIC": args.existing_topic, "_reachable": "1"}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--timeout", type=float, default=60)
    ap.add_argument("--bootstrap")
    ap.add_argument("--existing-topic")
    ap.add_argument("--only", help="run only the cases whose name contains this")
    args = ap.parse_args()
    base = {k: v for k, v in os.environ.items() if not k.startswith("SHELVER_")}
    with tempfile.TemporaryDirectory() as tmp:
        for name, env in cases(args, Path(tmp)).items():
            if args.only and args.only not in name:
                continue
            env = dict(env)
            if not env.pop("_reachable", None):  # misconfigurations: no broker, so a late failure hangs visibly
                env.setdefault("SHELVER_BOOTSTRAP_SERVERS", UNREACHABLE)
            start = time.monotonic()
            try:
                p = subprocess.run([sys.executable, "-m", "consumer.cli", "consume"], env={**base, **env},
                                   capture_output=True, text=True, timeout=args.timeout)
                rc, err = str(p.returncode), p.stderr
            except subprocess.TimeoutExpired as exc:
                rc, err = f"hang (killed after {args.timeout:g} s)", (exc.stderr or b"").decode(errors="replace")
            lines = [line for line in err.splitlines() if line.strip()]
            last = lines[-1][:160] if lines else ""
            print(f"| {name} | {rc} | {time.monotonic() - start:.1f} | {len(lines)} | `{last}` |", flush=True)


if __name__ == "__main__":
    main()
