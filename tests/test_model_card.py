"""The model card is rendered from the manifest and the evaluation, not written by hand."""

from training import model_card

TARGETS = ["TOPS", "DRESS", "OTHERS"]


def _results(acc=0.9):
    return {
        "targets": TARGETS,
        "marketplace": {
            "text-only": {
                "n": 10,
                "accuracy": acc,
                "macro_f1": 0.8,
                "sure": {"n": 6, "accuracy": 1.0},
                "accuracy_at_70pct_coverage": 0.95,
                "coverage_at_95pct_accuracy": 0.7,
                "per_class_recall": {"TOPS": 0.75, "DRESS": 1.0},
                "confusion": [[3, 1, 0], [0, 6, 0], [0, 0, 0]],
            },
            "tfidf_baseline": {"n": 10, "accuracy": 0.8, "sure": {"n": 6, "accuracy": 0.83}},
        },
    }


def _manifest(corpus, ablation=None):
    return {"version": "v-test", "created_at": "2026-12-03", "text": {"recipe": "r", "corpus": corpus,
                                                                     "ablation": ablation}}


def test_card_marks_hm_as_not_used_when_trained_without_it_and_states_its_licence():
    card = model_card.render(_manifest({"catalogue titles": 5, "marketplace examples": 2}), _results())
    hm_row = next(line for line in card.splitlines() if line.startswith("| H&M descriptions"))
    assert "not used" in hm_row and "restricted" in hm_row
    assert "| catalogue titles | 5 |" in card


def test_card_counts_the_myntra_rows_and_says_their_licence_is_not_confirmed():
    from training import text_corpus

    card = model_card.render(_manifest({text_corpus.MYNTRA_SOURCE: 4917}), _results())
    row = next(line for line in card.splitlines() if line.startswith("| Myntra descriptions"))
    assert "| 4917 |" in row and "not confirmed" in row and "--no-myntra" in row


def test_card_shows_model_beside_baseline_the_ablation_and_only_labelled_confusion_rows():
    ablation = {
        "full": {"accuracy": 0.9, "macro_f1": 0.8, "n": 10, "corpus": ["catalogue titles", "H&M descriptions"],
                 "seconds": 100},
        "without H&M": {"accuracy": 0.85, "macro_f1": 0.7, "n": 10, "corpus": ["catalogue titles"], "seconds": 50},
    }
    card = model_card.render(_manifest({"H&M descriptions": 7}, ablation), _results(acc=0.9))
    assert "| accuracy (n = 10) | 90.0% | 80.0% |" in card
    assert "| labeller sure (n = 6) | 100.0% | 83.0% |" in card
    assert "| without H&M | catalogue titles | 85.0% | 70.0% | 50 s |" in card
    assert "| TOPS | 3 | 1 | · | 75.0% |" in card
    assert "| OTHERS |" not in card  # no labelled OTHERS item: no row


def test_card_of_a_derived_artifact_names_its_origin_and_what_changed_and_a_trained_one_does_not():
    manifest = _manifest({"H&M descriptions": 7})
    assert "Derived from" not in model_card.render(manifest, _results())
    manifest["derived_from"] = {"artifact": "v-old", "changed": "ensemble: geometric mean"}
    card = model_card.render(manifest, _results())
    assert "Derived from `v-old`, whose models it carries; changed: ensemble: geometric mean." in card
