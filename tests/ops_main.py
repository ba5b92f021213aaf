"""``shelver consume`` with the small test model, for the operations tests (metrics, reload).

With ``SHELVER_ARTIFACT_DIR`` set, the model's version is the ``version`` of that artifact's
manifest, so repointing the artifact and reloading serves another version. ``TINY_LOAD_DELAY_S``
makes loading the model take that long (a hung load, for the start-up probes).
"""
import json
import os
import sys
import time

from consumer_main import SlowTiny

from consumer.cli import main


def load(settings):
    time.sleep(float(os.environ.get("TINY_LOAD_DELAY_S", "0")))
    model = SlowTiny()
    if settings.artifact_dir is not None:
        manifest = json.loads((settings.resolved_artifact_dir() / "manifest.json").read_text())
        model.model_version = manifest["version"]
    return model


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], load_categorizer=load))
