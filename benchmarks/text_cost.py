"""What the text half costs per event, as the service runs it: normalizer + encoder (Python) and the
text model (the categorizer's engine), in core-milliseconds (process CPU time, all threads) at batch 32,
on the development sample's marketplace descriptions (long prose, the expensive case) and on catalogue
titles. Called by `run_all.py` (`make benchmark`); alone:

    python benchmarks/text_cost.py            # the default artifact, both engines
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def core_ms_per_event(fn, batches, rounds: int = 5) -> float:
    fn(batches[0])  # warm-up: graph tracing, interpreter shapes
    n = sum(len(b) for b in batches) * rounds
    start = time.process_time()
    for _ in range(rounds):
        for b in batches:
            fn(b)
    return (time.process_time() - start) / n * 1e3


def measure(categorizer, texts: list[str], batch: int = 32) -> dict[str, float]:
    """core-ms per event: ``encode`` (normalize + ids), ``model`` (the engine on encoded ids), ``total``."""
    from models import engine as engine_mod

    encoder = categorizer.artifact.text_model.encoder
    batches = [texts[i : i + batch] for i in range(0, len(texts) - batch + 1, batch)]
    encoded = [engine_mod.pad_columns(encoder.encode(b), 32) for b in batches]
    enc = core_ms_per_event(lambda b: encoder.encode(b), batches)
    model = core_ms_per_event(categorizer._text_fn, encoded)
    return {"encode": enc, "model": model, "total": enc + model, "batch": batch,
            "ids_per_event": sum(len(encoder.ids(t)) for t in texts) / len(texts)}


def run(artifact=None, engines=("litert", "tensorflow")) -> dict:
    from models.artifact import load_categorizer
    from models.paths import newest_artifact
    from training.data import load_catalogue, load_marketplace

    artifact = artifact or newest_artifact()
    descriptions = [d["description"] for d in load_marketplace() if d["description"]][:256]
    titles = load_catalogue()["productDisplayName"].sample(256, random_state=0).tolist()
    out = {}
    for engine in engines:
        cat = load_categorizer(artifact, engine=engine)
        out[engine] = {"marketplace descriptions": measure(cat, descriptions), "catalogue titles": measure(cat, titles)}
    return {"model": load_categorizer(artifact, engine=engines[0]).model_version, "core_ms_per_event": out}


if __name__ == "__main__":
    print(json.dumps(run(), indent=1))
