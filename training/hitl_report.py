"""Writes the human-in-the-loop section of reports/evaluation.md from reports/calibration.json and
reports/learning_curve.json (`python -m training.hitl_report`, after `training.calibrate` and
`training.learning_curve`). The section sits between markers, so rerunning replaces it."""
from __future__ import annotations

import json
import re

from models.paths import REPORTS_DIR

REPORTS = REPORTS_DIR
START, END = "<!-- hitl:start -->", "<!-- hitl:end -->"


def section(cal: dict, lc: dict | None) -> str:
    th = cal["review_threshold"]
    lines = [START, "## Human in the loop: confidence, review routing, online corrections", "",
             "Confidence = Platt scaling on (log1p margin between the best and second KL, log1p best KL, image used, "
             "keyword margin = log1p of the taxonomy keywords of the chosen category that the text names − log1p of "
             "those of the runner-up), fitted by `python -m training.calibrate` on half A of the catalogue held-out split "
             "and on the labelled marketplace examples scored out of fold (`training/crossfit.py`); measured below on data "
             "it was not fitted on (the out-of-fold row is the fitting data, for reference). ECE: 10 equal-width bins.", ""]
    fc = cal.get("feature_choice (2-fold CV inside the out-of-fold examples)")
    if fc:
        lines += ["Feature choice, made before the evaluation part was scored: a 2-fold cross-validation of the "
                  "calibration inside the out-of-fold examples (fit on catalogue half A + one fold, measure the other):", "",
                  "| features | log loss | ECE | acc. on the 70% most confident |", "|---|---:|---:|---:|"]
        lines += [f"| {name} | {r['log_loss']:.3f} | {r['ece']:.3f} | {r['accuracy_at_70pct_coverage']:.1%} |"
                  for name, r in fc.items()]
        lines += ["", "Caveat: the taxonomy keywords were written by a person who had read all 500 marketplace descriptions "
                  "(the evaluation part included), so the keyword evidence may help less on products never read.", ""]
    lines += [
             f"Review threshold (suggested, stored in `calibration.json`): **{th:.3f}** = the lowest confidence at which "
             "the out-of-fold marketplace examples it accepts are ≥ 95% right.", "",
             "| part | n | accuracy | mean confidence | ECE | acc. on the 70% most confident | acc. on the 50% most confident "
             f"| largest coverage at ≥ 95% | coverage at {th:.2f} | acc. at {th:.2f} |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in cal["parts"].items():
        at = r["at_threshold"]
        lines.append(f"| {name} | {r['n']} | {r['accuracy']:.1%} | {r['mean_confidence']:.3f} | {r['ece']:.3f} | "
                     f"{r['accuracy_at_70pct_coverage']:.1%} | {r['accuracy_at_50pct_coverage']:.1%} | "
                     f"{format(r['coverage_at_95pct_accuracy'], '.1%') if 'coverage_at_95pct_accuracy' in r else '–'} | {at['coverage']:.1%} | "
                     f"{'–' if at['accuracy'] is None else format(at['accuracy'], '.1%')} |")
    by = cal.get("marketplace_by_label_confidence", {})
    if by:
        lines += ["", "Marketplace evaluation part by the labeller's certainty: " + "; ".join(
            f"{k}: n={v['n']}, accuracy {v['accuracy']:.1%}, mean confidence {v['mean_confidence']:.3f}" for k, v in by.items())]
    lines += ["", "![reliability](calibration_reliability.png)", "", "![accuracy against coverage](coverage_accuracy.png)", ""]
    if lc:
        lines += ["### Learning curve of the online corrections", "",
                  f"`python -m training.learning_curve`: the {lc['n_examples']} labelled examples streamed as corrections "
                  f"(file order, {lc['reviewers']} simulated reviewers round robin, reviewer cap {lc['reviewer_cap']:g}), "
                  f"the evaluation part (n={lc['n_eval']}) scored after every 25, starting from projections without "
                  f"examples; the networks are never retrained. Offline recipe on the same examples: {lc['offline_recipe']:.1%}.", "",
                  "Update rule (the service's, `models.taxonomy.corrected_projections`): q_t = (k·prior_t + Σ w_i p̃_i) / "
                  "(k + Σ w_i), p̃_i = the corrected product's distribution raised to the power τ and renormalized. "
                  f"k = {lc.get('prior_strength', 0):g} and τ = {lc.get('temperature', 1):g} were chosen together by prequential "
                  f"accuracy on the examples part (each correction scored before it is applied; mean over the file order and "
                  f"{max(lc.get('orders', 1) - 1, 0)} shuffles); the evaluation part played no part in the choice.", "",
                  "| text model | prior strength k | temperature τ | start | final | corrections | first ≥ offline recipe "
                  "| final with the first rule (k = 30, τ = 1) |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for name, r in lc["models"].items():
            reach = r['first_at_or_above_offline']
            prev = r.get("previous_rule_final")
            lines.append(f"| {name} | {r['prior_strength']:g} | {r.get('temperature', 1):g} | {r['curve'][0][1]:.1%} | "
                         f"{r['final']:.1%} | {r['corrections']} | {reach if reach is not None else 'not reached'} | "
                         f"{'–' if prev is None else format(prev, '.1%')} |")
        pq = lc.get("prequential_by_setting (strength,temperature)")
        if pq:
            top = sorted(pq.items(), key=lambda kv: -kv[1])[:5]
            lines += ["", "Prequential accuracy on the examples, best settings (k, τ): " +
                      "; ".join(f"({k}) {v:.1%}" for k, v in top) +
                      f"; the first rule (30, 1): {pq.get('30,1', float('nan')):.1%}."]
        lines += ["", "`noex` never saw the examples (the honest online case); `artifact` is the committed text model, whose "
                  "training included them (only its projections learn here).", "", "![learning curve](learning_curve.png)", ""]
    lines.append(END)
    return "\n".join(lines)


def main() -> None:
    cal = json.loads((REPORTS / "calibration.json").read_text())
    lc_file = REPORTS / "learning_curve.json"
    lc = json.loads(lc_file.read_text()) if lc_file.exists() else None
    report = REPORTS / "evaluation.md"
    text = report.read_text()
    new = section(cal, lc)
    if START in text:
        text = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: new, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + new + "\n"
    report.write_text(text)
    print(f"wrote the hitl section of {report}")


if __name__ == "__main__":
    main()
