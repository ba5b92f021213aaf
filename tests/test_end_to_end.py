"""The README's first command, end to end: scripts/run-demo (fresh broker, trained models,
sample products with images over HTTP, results table), checked against the catalogue labels."""
import os
import re
import subprocess
from pathlib import Path

import pytest

from training import data

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def test_run_demo_categorizes_every_sample_product_at_least_90_percent_right_with_its_image():
    count = 60
    env = {**os.environ, "SHELVER_DEMO_COUNT": str(count), "SHELVER_DEMO_KAFKA_PORT": "29592"}  # outside the ephemeral range
    env.pop("SHELVER_ARTIFACT_DIR", None)  # the committed artifact, as `make run` uses it
    proc = subprocess.run([ROOT / "scripts" / "run-demo"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"{count} products categorized" in proc.stdout
    rows = re.findall(r"^\s*(\d+)  .*?  ([A-Z]+)\s+\d+\.\d{3}\s", proc.stdout, flags=re.M)
    assert len(rows) == count
    catalogue = data.load_catalogue().set_index("id")
    mapping = data.article_type_targets()
    truth = {pid: mapping[catalogue.loc[int(pid), "articleType"]] for pid, _ in rows}
    correct = sum(truth[pid] == category for pid, category in rows)
    assert correct / count >= 0.9, [(pid, c, truth[pid]) for pid, c in rows if truth[pid] != c]
    table = [line for line in proc.stdout.splitlines() if re.match(r"^\s*\d+  ", line)]
    assert all(line.rstrip().endswith("yes") for line in table)  # every image fetched over HTTP and used
