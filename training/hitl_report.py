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
    keywords = "keyword_margin" in cal.get("features", ["keyword_margin"])
    used = ("log1p margin between the best and second KL, log1p best KL, image used" +
            (", keyword margin = log1p of the taxonomy keywords of the chosen category that the text names − log1p of "
             "those of the runner-up" if keywords else "; no keyword feature: the keywords were written after reading "
             "marketplace descriptions"))
    lines = [START, "## Human in the loop: confidence, review routing, online corrections", "",
             f"Confidence = Platt scaling on ({used}), fitted by `python -m training.calibrate` on half A of the "
             "catalogue held-out split "
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
                  "(the evaluation part included), so the keyword evidence may help less on products never read"
                  + ("." if keywords else "; the fitted confidence leaves it out for that reason."), ""]
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
        svc = lc["service"]
        lines += ["### Learning curve of the online corrections", "",
                  f"`python -m training.learning_curve`: the {lc['n_examples']} labelled examples streamed as text-only "
                  f"corrections (file order, {lc['reviewers']} simulated reviewers round robin, reviewer cap "
                  f"{svc['reviewer_cap']:g}) through the committed artifact `{lc['artifact']}` from its own projections, "
                  f"the evaluation part (n={lc['n_eval']}, nobody corrected it) scored after every 25; the networks are "
                  "never retrained. Rules: `adapter` (the service default, `models.correction_rule.fit_adapter`, "
                  f"L2 {lc['l2']:g}) and `projections` (the first rule, k = {svc['prior_strength']:g}, "
                  f"τ = {svc['temperature']:g}).", "",
                  "| text model | rule | start | final | gain | lowest after 50 | prequential (file order) |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        for name, res in lc["models"].items():
            for rule, r in res.items():
                lines.append(f"| {name} | {rule} | {r['curve'][0][1]:.1%} | {r['final']:.1%} | "
                             f"{100 * r['gain']:+.1f} pts | {r['lowest_after_50']:.1%} | {r['prequential_file_order']:.1%} |")
        lines += ["", "The adapter's L2 was chosen inside the examples part by out-of-fold prequential accuracy (each half "
                  "streamed through the text model trained without it, file order and shuffles): " +
                  "; ".join(f"{k} {v:.1%}" for k, v in lc["prequential_out_of_fold"].items()) + ".", "",
                  "`artifact` saw every example in training (its prequential accuracy is 100% and says nothing); "
                  "`noex` never saw them.", "", "![learning curve](learning_curve.png)", ""]
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
