"""A deterministic smoke training on a small real subset: train → save → load → predict → evaluate.

Runs the real `shelver train` path (CBOW + text model, frozen EfficientNet-Lite0 features,
image head, taxonomy projections, artifact, evaluation with the original method).
"""
import json

import numpy as np
import pytest
from PIL import Image

from models.artifact import load_artifact, load_categorizer
from training import data, train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smoke_artifact(tmp_path_factory):
    root = tmp_path_factory.mktemp("smoke")
    out = train.main(["--per-class", "12", "--text-epochs", "2", "--image-epochs", "8",
                      "--out", str(root / "artifact"), "--report-dir", str(root / "reports"), "--version", "smoke"])
    return out, root / "reports"


def test_artifact_is_complete_and_small(smoke_artifact):
    out, _ = smoke_artifact
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["version"] == "smoke"
    assert manifest["label_space"]["kind"] == "articleType"
    assert len(manifest["label_space"]["labels"]) > 40
    assert manifest["taxonomy"]["targets"][-1] == "OTHERS"
    assert "catalogue_ensemble_target_acc" in manifest["metrics"]
    assert manifest["ensemble"]["combine"] in ("mean", "geometric")  # chosen on validation rows with the weight
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    assert size < 40e6


def test_round_trip_predicts_the_same_as_the_trained_model(smoke_artifact):
    out, _ = smoke_artifact
    art = load_artifact(out)
    cat = load_categorizer(out)
    df = data.load_catalogue().sample(8, random_state=0)
    images = [cat.prepare_image(Image.open(p)) for p in df["image_path"]]
    texts = df["productDisplayName"].tolist()
    again = load_categorizer(out)
    first, second = cat.categorize(texts, images), again.categorize(texts, images)
    assert [d.category for d in first] == [d.category for d in second]
    assert np.allclose([d.kl for d in first], [d.kl for d in second], atol=1e-6)
    probs = art.text_model.predict_proba(texts)
    assert probs.shape == (8, len(art.manifest["label_space"]["labels"]))
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    assert all(d.image_used for d in first)
    assert not any(d.image_used for d in cat.categorize(texts, [None] * 8))


def test_smoke_model_learns_and_evaluation_reports_it(smoke_artifact):
    out, reports = smoke_artifact
    metrics = json.loads((reports / "metrics.json").read_text())
    ens = metrics["catalogue"]["ensemble"]
    # 12 target categories: chance is well under 30%; even 12 examples per class learn far more.
    assert ens["target"]["accuracy"] > 0.6
    assert ens["source"]["top5"] > ens["source"]["top1"]
    assert "original_method" in metrics
    assert (reports / "evaluation.md").read_text().startswith("# Evaluation of `smoke`")
    assert (reports / "confusion_catalogue.png").stat().st_size > 1000
