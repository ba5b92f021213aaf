"""Where Shelver writes: its own folders in a checkout, the user's XDG folders when installed as a wheel
(site-packages is shared with other distributions and, in the Docker image, not writable)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from models import paths

PRINT = ("import json; from models import paths as p; print(json.dumps({k: str(getattr(p, k)) for k in "
         "('REPORTS_DIR', 'TRAINED_ARTIFACTS_DIR', 'CACHE_DIR', 'ARTIFACTS_DIR')}))")


def test_a_checkout_writes_into_its_own_folders():
    assert paths.IS_CHECKOUT
    assert paths.REPORTS_DIR == paths.REPO_ROOT / "reports"
    assert paths.TRAINED_ARTIFACTS_DIR == paths.ARTIFACTS_DIR
    assert paths.CACHE_DIR == paths.REPO_ROOT / ".cache"


def test_an_installed_copy_writes_reports_artifacts_and_caches_under_the_users_folders(tmp_path):
    site = tmp_path / "site-packages"
    (site / "models").mkdir(parents=True)
    (site / "models" / "__init__.py").write_text("")
    shutil.copy(Path(paths.__file__), site / "models" / "paths.py")  # the module as a wheel installs it
    env = {**os.environ, "PYTHONPATH": str(site), "XDG_DATA_HOME": str(tmp_path / "data"),
           "XDG_CACHE_HOME": str(tmp_path / "cache")}
    out = json.loads(subprocess.run([sys.executable, "-c", PRINT], env=env, cwd=tmp_path, capture_output=True,
                                    text=True, check=True).stdout)
    assert out["REPORTS_DIR"] == str(tmp_path / "data" / "shelver" / "reports")
    assert out["TRAINED_ARTIFACTS_DIR"] == str(tmp_path / "data" / "shelver" / "artifacts")
    assert out["CACHE_DIR"] == str(tmp_path / "cache" / "shelver")
    assert out["ARTIFACTS_DIR"] == str(site / "models" / "artifacts")  # the shipped artifacts are only read
