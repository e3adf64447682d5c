#!/usr/bin/env python
"""Summarize the study runs (studies/run_study.py) into tables (mean ± std over seeds) and plots.

    python studies/summarize.py [--runs studies/runs] [--out studies/results] [--no_probabilities]
    python studies/summarize.py --runs studies/runs_local --out studies/results_local   # your own re-run
    python studies/summarize.py --runs studies/runs_local --reference studies/runs       # + how close it came

Writes `results.md` (the tables pasted into RESULTS.md), `results.json`, `learning_curves.png` and
`wrong_class_probabilities[_books_full].png` (the paper's diagnostic: mean wrong-class probabilities sorted in
decreasing order, on the test set, for the seed-0 model of each variant; computed by loading the saved models, so
only where the weights are on disk).

Each classification plan gets its mean ± std table (accuracy or test error, macro-F1, balanced accuracy and the tail
classes' recall where the runs report them, calibration: ECE over 15 equal-width confidence bins and NLL on the test
set, attacks) and paired tables, every variant against each baseline the plan has: CE, label smoothing and (the
long-tailed plans) CE with inverse-frequency class weights, as differences on the same seed with the seeds won
(hf_cot.compare's paired_differences / seeds_won / better_direction: lower is better for error, ECE, NLL).
`--reference DIR` adds, for every run that is in both folders, how far the two runs' test numbers are apart.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import statistics
import sys

from hf_cot.compare import better_direction, paired_differences, seeds_won

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Multi-step PGD (bbc_pgd plan): accuracy under 10-step PGD maximizing cross-entropy or the logit margin.
ATTACK_KEYS = [
    (f"pgd_{loss}_accuracy_eps_{eps}", f"PGD-{label} @{eps}", 100)
    for loss, label in (("ce", "CE"), ("margin", "margin"))
    for eps in ("0.01", "0.03", "0.1")
]
# Calibration on the test set (hf_cot's classification_metrics, given the logits): ECE with 15 equal-width bins of the
# top-class probability (in %, as accuracy), NLL = mean -log p(gold) in nats. Not predict_loss: with label smoothing
# or class weights the Trainer's loss is not the NLL.
CALIBRATION_KEYS = [("predict_ece", "ECE (%)", 100), ("predict_nll", "NLL (nats)", 1)]
CLASSIFICATION_KEYS = [
    ("predict_accuracy", "accuracy", 100),
    ("predict_error", "test error (%)", 100),  # the image plans (the paper reports test error)
    ("predict_macro_f1", "macro-F1", 100),
    # The long-tailed plans: the mean recall over classes, and over the rarest 30 % of the training classes.
    ("predict_balanced_accuracy", "balanced acc.", 100),
    ("predict_tail_recall", "tail recall", 100),
    *CALIBRATION_KEYS,
    ("predict_complement_entropy", "test H (nats)", 1),
    ("predict_normalized_complement_entropy", "H / log(K-1)", 1),
    ("fgsm_accuracy_eps_0.01", "FGSM acc @0.01", 100),
    ("fgsm_accuracy_eps_0.03", "FGSM acc @0.03", 100),
    ("fgsm_accuracy_eps_0.1", "FGSM acc @0.1", 100),
    *ATTACK_KEYS,
    ("train_runtime", "train s", 1),
    ("wall_time_s", "wall s", 1),
]
TRANSLATION_KEYS = [
    ("predict_bleu", "BLEU", 1),
    ("predict_chrf", "chrF", 1),
    ("predict_loss", "test CE (nats/token)", 1),
    ("predict_normalized_complement_entropy", "H / log(V-1)", 1),
    ("predict_gen_len", "output tokens", 1),
    ("train_runtime", "train s", 1),
    ("wall_time_s", "wall s", 1),
]

# The sft plan (examples/language-modeling/run_sft.py): test-split next-token metrics, greedy BLEU/chrF on 100 verses.
SFT_KEYS = [
    ("predict_mean_token_accuracy", "token acc. (%)", 100),
    ("predict_perplexity", "perplexity", 1),
    ("predict_complement_entropy", "test H (nats)", 1),
    ("predict_bleu", "BLEU", 1),
    ("predict_chrf", "chrF", 1),
    ("train_runtime", "train s", 1),
    ("wall_time_s", "wall s", 1),
]


_ATTACK_KEY = re.compile(r"^(fgsm|pgd_ce|pgd_margin)_accuracy_eps_(.+)$")


def with_found_attacks(keys, variants: dict, fgsm_label: str = "FGSM acc @{}"):
    """``keys`` with the attack columns the runs hold at any epsilon (the image plans attack pixels at 0.03, 0.1, 0.2),
    all of them ordered by attack then epsilon, before the timing columns."""
    labels = {"fgsm": fgsm_label, "pgd_ce": "PGD-CE @{}", "pgd_margin": "PGD-margin @{}"}
    attacks = {k: (k, label, scale) for k, label, scale in keys if _ATTACK_KEY.match(k)}
    for runs in variants.values():
        for r in runs:
            for k in r:
                match = _ATTACK_KEY.match(k)
                if match and k not in attacks:
                    attacks[k] = (k, labels[match.group(1)].format(match.group(2)), 100)
    order = list(labels)

    def rank(key):
        kind, eps = _ATTACK_KEY.match(key).groups()
        return order.index(kind), float(eps)

    rest = [entry for entry in keys if entry[0] not in attacks]
    timing = [i for i, (k, _, _) in enumerate(rest) if k in ("train_runtime", "wall_time_s")]
    cut = timing[0] if timing else len(rest)
    return rest[:cut] + [attacks[k] for k in sorted(attacks, key=rank)] + rest[cut:]


def load_runs(runs_dir: str) -> dict:
    """{plan: {variant: [results per seed]}}"""
    table: dict = {}
    for path in sorted(glob.glob(os.path.join(runs_dir, "*", "*", "seed*", "all_results.json"))):
        seed_dir = os.path.dirname(path)
        variant_dir = os.path.dirname(seed_dir)
        plan = os.path.basename(os.path.dirname(variant_dir))
        with open(path) as f:
            result = json.load(f)
        wall = os.path.join(seed_dir, "wall_time.json")
        if not os.path.isfile(wall):  # still running, or failed
            continue
        with open(wall) as f:
            result.update(json.load(f))
        result["_dir"] = seed_dir
        table.setdefault(plan, {}).setdefault(os.path.basename(variant_dir), []).append(result)
    return table


def mean_std(values):
    if not values:
        return None
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def markdown_table(plan: str, variants: dict, keys) -> tuple[str, dict]:
    present = [
        (k, label, scale) for k, label, scale in keys if any(k in r for runs in variants.values() for r in runs)
    ]
    lines = [
        "| variant | seeds | " + " | ".join(label for _, label, _ in present) + " |",
        "|---|---|" + "---|" * len(present),
    ]
    summary = {}
    for name in sorted(variants, key=variant_rank):
        runs = variants[name]
        cells, summary[name] = [], {"seeds": len(runs)}
        for key, _, scale in present:
            stats = mean_std([r[key] * scale for r in runs if key in r])
            summary[name][key] = stats
            cells.append(
                "—"
                if stats is None
                else (
                    f"{stats[0]:.2f} ± {stats[1]:.2f}"
                    if scale != 1 or stats[0] < 100
                    else f"{stats[0]:.0f} ± {stats[1]:.0f}"
                )
            )
        lines.append(f"| {name} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines), summary


# Table order: the baselines first (CE, then what a practitioner tries first), then the COT modes.
VARIANT_ORDER = ["ce", "ce_class_weights", "label_smoothing", "alternating", "joint", "guided", "joint_class_weights"]
# The baselines every other variant is paired against, where the plan has them, with their names in the tables.
BASELINES = {"ce": "CE", "label_smoothing": "label smoothing", "ce_class_weights": "class weights"}


def variant_rank(name: str):
    return (VARIANT_ORDER.index(name) if name in VARIANT_ORDER else len(VARIANT_ORDER), name)


# Paired against each baseline on the same seed: the metrics a reader compares first.
PAIRED_KEYS = {
    "classification": [
        ("predict_accuracy", "accuracy", 100),
        ("predict_error", "test error (points; ahead = lower)", 100),
        ("predict_macro_f1", "macro-F1", 100),
        ("predict_balanced_accuracy", "balanced acc.", 100),
        ("predict_tail_recall", "tail recall", 100),
        ("predict_ece", "ECE (points; ahead = lower)", 100),
        ("predict_nll", "NLL (ahead = lower)", 1),
        ("fgsm_accuracy_eps_0.01", "FGSM @0.01", 100),
        ("fgsm_accuracy_eps_0.03", "FGSM @0.03", 100),
        ("fgsm_accuracy_eps_0.1", "FGSM @0.1", 100),
        *ATTACK_KEYS,
    ],
    "translation": [("predict_bleu", "BLEU", 1), ("predict_chrf", "chrF", 1)],
    "sft": [k for k in SFT_KEYS if k[0] != "wall_time_s"],
}


def run_seed(result: dict) -> int:
    return int(result["_dir"].rsplit("seed", 1)[1])


def by_seed(runs: list, key: str, scale: float = 1) -> dict[int, float]:
    """{seed: value * scale} of one variant's runs that report ``key``."""
    return {run_seed(r): r[key] * scale for r in runs if key in r}


def paired_cell(runs: list, baseline_runs: list, key: str, scale: float) -> str:
    """``mean ± std (won/n)`` of the per-seed differences run - baseline (", t tied" when some seeds tie: a small test
    set gives equal accuracies often); "won" follows the metric's direction (hf_cot.compare.better_direction)."""
    diffs = paired_differences(by_seed(runs, key, scale), by_seed(baseline_runs, key, scale))
    stats = mean_std(list(diffs.values()))
    if stats is None:
        return "—"
    won, tied, _ = seeds_won(diffs, better_direction(key))
    return f"{stats[0]:+.2f} ± {stats[1]:.2f} ({won}/{len(diffs)}{f', {tied} tied' if tied else ''})"


def paired_table(variants: dict, keys, baseline: str = "ce") -> str:
    """Per-seed differences variant - baseline: mean ± std, and on how many seeds the variant is ahead. Against CE every
    other variant; against another baseline (label smoothing, class weights) the COT variants, the baselines' own
    difference being in the CE table."""
    if baseline not in variants:
        return ""
    keys = [(k, label, scale) for k, label, scale in keys if any(k in r for runs in variants.values() for r in runs)]
    name = BASELINES.get(baseline, baseline)
    lines = [
        f"| variant vs {name} | " + " | ".join(label for _, label, _ in keys) + " |",
        "|---|" + "---|" * len(keys),
    ]
    others = [
        v for v in sorted(variants, key=variant_rank) if v != baseline and (baseline == "ce" or v not in BASELINES)
    ]
    if not others:
        return ""
    for other in others:
        cells = [paired_cell(variants[other], variants[baseline], key, scale) for key, _, scale in keys]
        lines.append(f"| {other} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# Timing and throughput differ between any two runs; every other number of all_results.json is a result.
_TIMING = re.compile(r"(runtime|per_second|wall_time)")


def reproduction_table(table: dict, reference: dict) -> str:
    """For every (plan, variant) in both folders: on how many seeds the two runs gave the same test accuracy, on how
    many every result number (evaluation, test, attacks; not timings) is identical, and the largest test-accuracy
    difference in test examples (|accuracy difference| x test-set size)."""
    lines = ["| plan | variant | seeds in both | same test accuracy | every number identical | largest difference "
             "(test examples) |", "|---|---|---|---|---|---|"]  # fmt: skip
    for plan in sorted(set(table) & set(reference)):
        for variant in sorted(set(table[plan]) & set(reference[plan]), key=variant_rank):
            new = {run_seed(r): r for r in table[plan][variant]}
            old = {run_seed(r): r for r in reference[plan][variant]}
            seeds = sorted(
                s for s in set(new) & set(old) if "predict_accuracy" in new[s] and "predict_accuracy" in old[s]
            )
            if not seeds:
                continue
            gaps = [
                round(abs(new[s]["predict_accuracy"] - old[s]["predict_accuracy"]) * new[s].get("predict_samples", 1))
                for s in seeds
            ]
            identical = sum(
                all(new[s][k] == old[s][k] for k in set(new[s]) & set(old[s]) if k != "_dir" and not _TIMING.search(k))
                for s in seeds
            )
            same = sum(g == 0 for g in gaps)
            lines.append(f"| {plan} | {variant} | {len(seeds)} | {same}/{len(seeds)} | {identical}/{len(seeds)} | "
                         f"{max(gaps)} |")  # fmt: skip
    return "\n".join(lines) if len(lines) > 2 else ""


def per_seed_table(variants: dict, key: str, label: str, scale: float = 100) -> str:
    """One row per seed: CE's value, then each variant's value and its difference to CE on that seed."""
    if "ce" not in variants or not any(key in r for r in variants["ce"]):
        return ""
    by_seed = {
        name: {r["_dir"].rsplit("seed", 1)[1]: r[key] * scale for r in runs if key in r}
        for name, runs in variants.items()
    }
    others = [n for n in sorted(by_seed, key=variant_rank) if n != "ce"]
    lines = [f"| seed | CE {label} | " + " | ".join(f"{n} (vs CE)" for n in others) + " |",
             "|---|---|" + "---|" * len(others)]  # fmt: skip
    for seed in sorted(by_seed["ce"], key=int):
        base = by_seed["ce"][seed]
        cells = [
            f"{by_seed[n][seed]:.2f} ({by_seed[n][seed] - base:+.2f})" if seed in by_seed[n] else "—" for n in others
        ]
        lines.append(f"| {seed} | {base:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_learning_curves(table: dict, out_png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plans = [p for p in ("bbc", "books_full", "translation") if p in table]
    if not plans:
        return
    fig, axes = plt.subplots(1, len(plans), figsize=(5 * len(plans), 3.6), squeeze=False)
    for ax, plan in zip(axes[0], plans, strict=True):
        for variant, runs in sorted(table[plan].items()):
            curves = []
            for r in runs:
                state = os.path.join(r["_dir"], "trainer_state.json")
                if os.path.isfile(state):
                    with open(state) as f:
                        history = json.load(f)["log_history"]
                    curves.append({h["step"]: h["loss"] for h in history if "loss" in h})
            if not curves:
                continue
            steps = sorted(set.intersection(*(set(c) for c in curves)))
            ax.plot(steps, [statistics.mean(c[s] for c in curves) for s in steps], label=variant)
        ax.set_title(f"{plan}: training loss (mean over seeds)")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("logged loss")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)


def sorted_wrong_class_probabilities(model_dir: str, texts, labels, max_length: int = 64):
    """Mean wrong-class probabilities of a saved classifier, sorted; ``labels`` are ids or the model's label names."""
    import numpy as np
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from hf_cot import metrics as cot_metrics

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    labels = [model.config.label2id[label] if isinstance(label, str) else label for label in labels]
    logits = []
    with torch.no_grad():
        for i in range(0, len(texts), 64):
            enc = tok(texts[i : i + 64], truncation=True, max_length=max_length, padding=True, return_tensors="pt")
            logits.append(model(**enc).logits.float().numpy())
    result = cot_metrics.load("complement_entropy").compute(
        predictions=np.concatenate(logits), references=labels, return_sorted_probabilities=True
    )
    return result["sorted_wrong_class_probabilities"]


def _test_set(plan: str, runs_dir: str):
    """(texts, labels, title) of the test set a plan's classifiers are scored on."""
    if plan == "bbc":
        sys.path.insert(0, os.path.join(ROOT, "examples", "text-classification"))
        from bbc_news import load_bbc_news

        test = load_bbc_news()["test"]
        return list(test["text"]), list(test["label"]), "BBC test set (5 classes)"
    sys.path.insert(0, os.path.join(ROOT, "studies"))
    from run_study import books_data_dir

    with open(os.path.join(books_data_dir(runs_dir, plan), "test.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return [r["text"] for r in rows], [r["label"] for r in rows], "verse -> book test set (66 classes)"


def plot_wrong_class_probabilities(table: dict, runs_dir: str, out_dir: str) -> dict:
    """The paper's diagnostic for every classification plan whose seed-0 models are on disk (bbc, books_full)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    all_curves = {}
    for plan in ("bbc", "books_full"):
        dirs = {
            variant: r["_dir"]
            for variant, runs in sorted(table.get(plan, {}).items())
            for r in runs
            if r["_dir"].endswith("seed0") and os.path.isfile(os.path.join(r["_dir"], "config.json"))
        }
        if not dirs:
            continue
        texts, labels, title = _test_set(plan, runs_dir)
        curves = {variant: sorted_wrong_class_probabilities(d, texts, labels) for variant, d in dirs.items()}
        fig, ax = plt.subplots(figsize=(5, 3.6))
        for variant, curve in curves.items():
            ax.plot(range(1, len(curve) + 1), curve, marker="o" if len(curve) < 10 else None, label=variant)
        ax.set_yscale("log")
        ax.set_xlabel("wrong class, by decreasing probability")
        ax.set_ylabel("mean predicted probability")
        ax.set_title(f"{title}, seed 0", fontsize=9)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(
            os.path.join(out_dir, "wrong_class_probabilities" + ("" if plan == "bbc" else f"_{plan}") + ".png"),
            dpi=120,
        )
        all_curves[plan] = curves
    return all_curves


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default=os.path.join(ROOT, "studies", "runs"))
    parser.add_argument("--out", default=os.path.join(ROOT, "studies", "results"))
    parser.add_argument("--no_probabilities", action="store_true", help="skip the plot that loads saved models")
    parser.add_argument(
        "--reference",
        default=None,
        help="another runs folder (e.g. the committed studies/runs): adds how close each run common to both came",
    )
    opts = parser.parse_args(argv)
    os.makedirs(opts.out, exist_ok=True)
    table = load_runs(opts.runs)
    sections, summary = [], {}
    for plan in sorted(table):
        kind = plan if plan in ("translation", "sft") else "classification"
        keys = {"translation": TRANSLATION_KEYS, "sft": SFT_KEYS}.get(kind, CLASSIFICATION_KEYS)
        paired_keys = PAIRED_KEYS[kind]
        if kind == "classification":
            keys = with_found_attacks(keys, table[plan])
            paired_keys = with_found_attacks(paired_keys, table[plan], fgsm_label="FGSM @{}")
        text, summary[plan] = markdown_table(plan, table[plan], keys)
        paired = "".join(
            f"\nPaired differences to {name} on the same seed (seeds where the variant is ahead):\n\n{body}\n"
            for baseline, name in BASELINES.items()
            if (body := paired_table(table[plan], paired_keys, baseline))
        )
        seeds = per_seed_table(table[plan], "predict_error", "test error (%)")
        sections.append(
            f"### {plan}\n\n{text}\n"
            + paired
            + (f"\nTest error per seed (%), difference to CE on the same seed:\n\n{seeds}\n" if seeds else "")
        )
    if opts.reference:
        reproduced = reproduction_table(table, load_runs(opts.reference))
        if reproduced:
            sections.append(f"### re-run vs {opts.reference}\n\n{reproduced}\n")
    with open(os.path.join(opts.out, "results.md"), "w") as f:
        f.write("\n".join(sections))
    plot_learning_curves(table, os.path.join(opts.out, "learning_curves.png"))
    if not opts.no_probabilities:
        summary["wrong_class_probabilities"] = plot_wrong_class_probabilities(table, opts.runs, opts.out)
    with open(os.path.join(opts.out, "results.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print("\n".join(sections))


if __name__ == "__main__":
    main()
