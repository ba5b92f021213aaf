"""Measured learning curve of the online corrections (`python -m training.learning_curve`).

Measured the way the service runs: the labelled marketplace *examples* part is streamed, in file order,
as corrections (latest per product, as `consumer.corrections.ProjectionState` keeps them; each carries
its text and the text model supplies its source distribution, as the service does for text-only
corrections) through the *committed* artifact, starting from the artifact's own projections, with the
service's code for each rule (`models.correction_rule`):

* ``adapter`` (the service default): `fit_adapter`, a per-target shift of the divergences fitted to the
  corrections;
* ``projections`` (the first rule): `corrected_projections` with the service's k and temperature.

After every 25 corrections the *evaluation* part is scored (text only, argmin of the divergences, no
retraining). Reviewers are simulated round robin (``--reviewers``; one person labelled the whole
sample), so the per-reviewer cap applies as in production.

The adapter's L2 strength is chosen by prequential accuracy (each correction scored before it is
applied) inside the examples part only: each half of the examples is streamed through the text model
trained without that half (`training.crossfit`'s fold models, which never saw those products), in the
file order and ``--orders`` - 1 seeded shuffles. The evaluation part plays no part in the choice. The
committed model saw every example in training, so its own prequential accuracy says nothing; the
out-of-fold rows are the honest measure of what a correction teaches. ``--noex`` adds the recipe
trained without any example (`training.crossfit.noex_model`; trains it when not cached). ``--margins``
adds the margin loss tried on 2026-12-04 (`fit_margin_adapter`) to the choice's printout; the choice itself
stays among the service's rules.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from models import kl
from models.correction_rule import (Adapter, Correction, _applicable, _owners, adapter_features, corrected_projections,
                                   fit_adapter, reviewer_weights)
from models.paths import REPORTS_DIR, newest_artifact
from models.taxonomy import build_projections, load_taxonomy
from training.marketplace_eval import TAXONOMY, UNLABELABLE, dev_split, load_dev

SERVICE = {"prior_strength": 3.0, "temperature": 0.3, "reviewer_cap": 20.0}  # consumer.config's defaults
MARGIN_GRID = (0.5, 1.0, 2.0, 4.0)  # nats; `--margins`: the margin loss tried on 2026-12-04 (not adopted)
L2_GRID = (1.0, 3.0, 10.0, 30.0)  # l2 >= 1 keeps one reviewer's bound (4 cap / l2 nats) at most 4 cap


def fit_margin_adapter(base_q: np.ndarray, targets: Sequence[str], corrections: Sequence[Correction],
                       l2: float = 1.0, margin: float = 1.0, reviewer_cap: float = SERVICE["reviewer_cap"],
                       max_iter: int = 3000, tol: float = 1e-9) -> Adapter | None:
    """`fit_adapter` with a smoothed hinge on the log-sum-exp margin instead of the cross-entropy (an
    experiment, not a service rule): a correction the model already puts right by ``margin`` nats costs
    nothing, so corrections that agree with the model leave θ at 0. Loss h(u), u = LSE_{t≠y}(z_t) − z_y +
    margin: 0 for u ≤ 0, u²/2 up to 1, u − 1/2 beyond. Convex in θ, and its gradient per unit of weight is
    at most 2, as the cross-entropy's (the same bound on one reviewer)."""
    owner = _owners(targets, None)
    kept = _applicable(corrections, owner)  # one fixed order, as fit_adapter takes them
    if not kept:
        return None
    p = kl.normalize_rows(np.stack([np.clip(np.asarray(c.p, dtype=np.float64), 0.0, None) for c in kept]))
    x, offset = adapter_features(p), -kl.kl_matrix(np.asarray(p), np.asarray(base_q, dtype=np.float64))
    yi = np.array([owner[c.category] for c in kept])
    y = np.zeros((len(kept), len(targets)))
    y[np.arange(len(kept)), yi] = 1.0
    w = reviewer_weights([c.reviewer for c in kept], reviewer_cap)[:, None]
    lipschitz = l2 + float(w.sum()) * 2 * (2.0 + 0.5)  # h'' ≤ 1 times ‖∇u‖² ≤ 2, plus the LSE's 1/2; ‖x‖² = 2
    momentum = (np.sqrt(lipschitz) - np.sqrt(l2)) / (np.sqrt(lipschitz) + np.sqrt(l2))
    theta = np.zeros((x.shape[1], len(targets)))
    ahead = theta
    for _ in range(max_iter):
        z = offset + x @ ahead
        others = np.where(y > 0, -np.inf, z)
        top = others.max(axis=1, keepdims=True)
        e = np.exp(others - top)
        u = top[:, 0] + np.log(e.sum(axis=1)) - z[np.arange(len(z)), yi] + margin
        slope = np.clip(u, 0.0, 1.0)[:, None]  # h'(u)
        grad = x.T @ (w * slope * (e / e.sum(axis=1, keepdims=True) - y)) + l2 * ahead
        nxt = ahead - grad / lipschitz
        ahead, theta = nxt + momentum * (nxt - theta), nxt
        if float(np.abs(grad).max()) <= tol:
            break
    return Adapter(theta, len(kept))


def decide(rule: str, q0: np.ndarray, targets: Sequence[str], corrections: Sequence[Correction], p: np.ndarray,
           l2: float = 1.0, reviewer_cap: float = SERVICE["reviewer_cap"], margin: float = 1.0) -> np.ndarray:
    """Target index per row of ``p`` after ``corrections``, as the service decides it under ``rule``
    (``margin``: `fit_margin_adapter`, the experiment)."""
    if rule == "none" or not corrections:
        return kl.kl_matrix(p, q0).argmin(1)
    if rule == "projections":
        q, _ = corrected_projections(q0, targets, corrections, SERVICE["prior_strength"], reviewer_cap,
                                     temperature=SERVICE["temperature"])
        return kl.kl_matrix(p, q).argmin(1)
    adapter = (fit_margin_adapter(q0, targets, corrections, l2, margin, reviewer_cap) if rule == "margin"
               else fit_adapter(q0, targets, corrections, l2, reviewer_cap))
    k = kl.kl_matrix(p, q0)
    return (k if adapter is None else adapter.adjusted(k, p)).argmin(1)


def corrections_of(ids, labels, p, n_reviewers: int) -> list[Correction]:
    return [Correction(str(pid), str(label), row, f"reviewer-{i % n_reviewers}")
            for i, (pid, label, row) in enumerate(zip(ids, labels, p))]


def prequential(rule: str, q0, targets, cs: list[Correction], l2: float = 1.0, margin: float = 1.0) -> float:
    """Share of the stream's corrections whose product was already put right before it was applied."""
    names = np.asarray(targets)
    hits = [names[decide(rule, q0, targets, cs[:i], cs[i].p[None, :], l2, margin=margin)[0]] == cs[i].category
            for i in range(len(cs))]
    return float(np.mean(hits))


def curve(rule: str, q0, targets, cs: list[Correction], p_eval: np.ndarray, truth: np.ndarray, l2: float = 1.0,
          every: int = 25) -> list[tuple[int, float]]:
    """(corrections streamed, accuracy on the evaluation part) every ``every`` corrections."""
    names = np.asarray(targets)
    points = sorted({0, len(cs), *range(every, len(cs), every)})
    return [(n, float(np.mean(names[decide(rule, q0, targets, cs[:n], p_eval, l2)] == truth))) for n in points]


def out_of_fold_streams(ex, n_reviewers: int, orders: int) -> list[list[Correction]]:
    """Each half of the examples, through the fold model that never saw it, in file order and shuffles."""
    from models.text_model import load_text_model
    from training.crossfit import CACHE, RECIPE, fold_of_examples

    dev = load_dev()
    ex_idx, _ = dev_split(dev)
    fold_all = fold_of_examples(dev, ex_idx, 2)
    fold = fold_all[dev["label"].iloc[ex_idx].to_numpy() != UNLABELABLE]
    streams = []
    for k in range(2):
        d = CACHE / f"{RECIPE}-fold{k}of2"
        if not (d / "text_vocab.json").exists():
            raise SystemExit(f"{d} is missing: run `python -m training.crossfit` first")
        tm = load_text_model(d)
        part = ex[fold == k]
        p = kl.normalize_rows(tm.predict_proba(part["text"].tolist()).astype(np.float64))
        for s in range(orders):
            o = np.arange(len(part)) if s == 0 else np.random.default_rng(s).permutation(len(part))
            streams.append(corrections_of(part["index"].to_numpy()[o], part["label"].to_numpy()[o], p[o], n_reviewers))
    return streams


def main(argv: Sequence[str] | None = None) -> dict:
    from models.text_model import load_text_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reviewers", type=int, default=5)
    ap.add_argument("--orders", type=int, default=3, help="stream orders the prequential accuracy averages over")
    ap.add_argument("--noex", action="store_true", help="also the text recipe trained without the examples")
    ap.add_argument("--margins", action="store_true",
                    help="also the margin loss (`fit_margin_adapter`) over MARGIN_GRID in the choice (not adopted)")
    ap.add_argument("--report-dir", type=Path, default=REPORTS_DIR)
    args = ap.parse_args(argv)
    taxonomy = load_taxonomy(TAXONOMY)
    targets = list(taxonomy.targets)
    dev = load_dev()
    ex_idx, ev_idx = dev_split(dev)
    ex, ev = dev.iloc[ex_idx], dev.iloc[ev_idx]
    ex, ev = ex[ex["label"] != UNLABELABLE], ev[ev["label"] != UNLABELABLE]
    truth = ev["label"].to_numpy()
    artifact = newest_artifact()
    with np.load(artifact / "projections.npz") as z:
        q_art, art_targets = z["q"].astype(np.float64), [str(t) for t in z["targets"]]
    if art_targets != targets:
        raise SystemExit(f"{artifact}: its targets differ from {TAXONOMY}")
    out: dict = {"artifact": artifact.name, "n_examples": len(ex), "n_eval": len(ev), "reviewers": args.reviewers,
                 "service": SERVICE, "orders": args.orders, "models": {}}

    # The choice, inside the examples part: out-of-fold streams, prequential accuracy.
    streams = out_of_fold_streams(ex, args.reviewers, args.orders)
    choice = {f"adapter l2={l2:g}": float(np.mean([prequential("adapter", q_art, targets, s, l2) for s in streams]))
              for l2 in L2_GRID}
    choice["projections (service k, τ)"] = float(np.mean([prequential("projections", q_art, targets, s)
                                                          for s in streams]))
    choice["no corrections"] = float(np.mean([prequential("none", q_art, targets, s) for s in streams]))
    if args.margins:  # reported beside the choice; the service's rule stays the cross-entropy adapter
        for l2m in (1.0, 3.0):
            for m in MARGIN_GRID:
                choice[f"margin m={m:g} l2={l2m:g}"] = float(np.mean([
                    prequential("margin", q_art, targets, s, l2m, m) for s in streams]))
                print(f"out-of-fold prequential, margin loss m={m:g} l2={l2m:g}: {choice[f'margin m={m:g} l2={l2m:g}']:.4f}")
    l2 = max(L2_GRID, key=lambda v: (round(choice[f"adapter l2={v:g}"], 9), v))  # ties: the tighter bound
    out.update({"l2": l2, "prequential_out_of_fold": choice})
    print(f"chosen inside the examples part: adapter l2 {l2:g} (out-of-fold prequential {choice[f'adapter l2={l2:g}']:.3f}; "
          f"projections rule {choice['projections (service k, τ)']:.3f}; none {choice['no corrections']:.3f})")

    models = {"artifact": (load_text_model(artifact / "text"), q_art)}
    if args.noex:
        from training.crossfit import noex_model

        tm = noex_model()
        models["noex"] = (tm, build_projections(taxonomy, list(tm.labels), tm, None))
    for name, (tm, q0) in models.items():
        # One text per call, as the service computes a text-only correction's distribution.
        p_ex = np.stack([kl.normalize_rows(tm.predict_proba([t]).astype(np.float64))[0] for t in ex["text"]])
        p_ev = kl.normalize_rows(tm.predict_proba(ev["text"].tolist()).astype(np.float64))
        cs = corrections_of(ex["index"], ex["label"], p_ex, args.reviewers)
        res = {}
        for rule in ("adapter", "projections"):
            c = curve(rule, q0, targets, cs, p_ev, truth, l2)
            res[rule] = {"curve": c, "final": c[-1][1], "gain": c[-1][1] - c[0][1],
                         "lowest_after_50": min(a for n, a in c if n >= 50),
                         "prequential_file_order": prequential(rule, q0, targets, cs, l2)}
            print(f"{name:8s} {rule:11s} start {c[0][1]:.3f} → final {c[-1][1]:.3f} after {c[-1][0]} corrections "
                  f"(lowest after 50: {res[rule]['lowest_after_50']:.3f})")
        out["models"][name] = res
    _plot(out, args.report_dir / "learning_curve.png")
    (args.report_dir / "learning_curve.json").write_text(json.dumps(out, indent=1) + "\n")
    return out


def _plot(out: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    names = {"artifact": f"committed model {out['artifact']}", "noex": "model trained without the examples"}
    styles = {"adapter": "-", "projections": "--"}
    for name, res in out["models"].items():
        for rule, r in res.items():
            n, acc = zip(*r["curve"])
            ax.plot(n, acc, styles[rule], marker="o", ms=3, label=f"{names[name]}, {rule} rule")
    ax.set_xlabel("corrections streamed (labelled examples part, file order)")
    ax.set_ylabel(f"accuracy on the evaluation part (n={out['n_eval']})")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
