#!/usr/bin/env python
"""Summarize the study runs (studies/run_study.py) into tables (mean ± std over seeds) and plots.

    python studies/summarize.py [--runs studies/runs] [--out studies/results] [--no_probabilities]

Writes `results.md` (the tables pasted into RESULTS.md), `results.json`, `learning_curves.png` and
`wrong_class_probabilities[_books_full].png` (the paper's diagnostic: mean wrong-class probabilities sorted in
decreasing order, on the test set, for the seed-0 model of each variant; computed by loading the saved models, so
only where the weights are on disk).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Multi-step PGD (bbc_pgd plan): accuracy under 10-step PGD maximizing cross-entropy or the logit margin.
ATTACK_KEYS = [
    (f"pgd_{loss}_accuracy_eps_{eps}", f"PGD-{label} @{eps}", 100)
    for loss, label in (("ce", "CE"), ("margin", "margin"))
    for eps in ("0.01", "0.03", "0.1")
]
CLASSIFICATION_KEYS = [
    ("predict_accuracy", "accuracy", 100),
    ("predict_error", "test error (%)", 100),  # the image plans (the paper reports test error)
    ("predict_macro_f1", "macro-F1", 100),
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


# Lower is better: a "win" in the paired tables is a decrease.
LOWER_IS_BETTER = {"predict_error"}
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
    order = ["ce", "alternating", "joint", "guided"]
    for name in sorted(variants, key=lambda v: (order.index(v) if v in order else len(order), v)):
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


# Paired against CE on the same seed: the metrics a reader compares first.
PAIRED_KEYS = {
    "classification": [
        ("predict_accuracy", "accuracy", 100),
        ("predict_error", "test error (points; ahead = lower)", 100),
        ("fgsm_accuracy_eps_0.01", "FGSM @0.01", 100),
        ("fgsm_accuracy_eps_0.03", "FGSM @0.03", 100),
        ("fgsm_accuracy_eps_0.1", "FGSM @0.1", 100),
        *ATTACK_KEYS,
    ],
    "translation": [("predict_bleu", "BLEU", 1), ("predict_chrf", "chrF", 1)],
    "sft": [k for k in SFT_KEYS if k[0] != "wall_time_s"],
}


def paired_table(variants: dict, keys) -> str:
    """Per-seed differences variant - CE: mean ± std, and on how many seeds the variant is ahead."""
    if "ce" not in variants:
        return ""
    baseline = {r["_dir"].rsplit("seed", 1)[1]: r for r in variants["ce"]}
    keys = [(k, label, scale) for k, label, scale in keys if any(k in r for runs in variants.values() for r in runs)]
    lines = ["| variant vs CE | " + " | ".join(label for _, label, _ in keys) + " |", "|---|" + "---|" * len(keys)]
    for name, runs in sorted(variants.items()):
        if name == "ce":
            continue
        cells = []
        for key, _, scale in keys:
            diffs = [
                (r[key] - baseline[seed][key]) * scale
                for r in runs
                if (seed := r["_dir"].rsplit("seed", 1)[1]) in baseline and key in r and key in baseline[seed]
            ]
            stats = mean_std(diffs)
            wins = sum(d < 0 if key in LOWER_IS_BETTER else d > 0 for d in diffs)
            cells.append("—" if stats is None else f"{stats[0]:+.2f} ± {stats[1]:.2f} ({wins}/{len(diffs)})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def per_seed_table(variants: dict, key: str, label: str, scale: float = 100) -> str:
    """One row per seed: CE's value, then each variant's value and its difference to CE on that seed."""
    if "ce" not in variants or not any(key in r for r in variants["ce"]):
        return ""
    by_seed = {
        name: {r["_dir"].rsplit("seed", 1)[1]: r[key] * scale for r in runs if key in r}
        for name, runs in variants.items()
    }
    others = [n for n in ("alternating", "joint", "guided") if n in by_seed] + sorted(
        n for n in by_seed if n not in ("ce", "alternating", "joint", "guided")
    )
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
        paired = paired_table(table[plan], paired_keys)
        seeds = per_seed_table(table[plan], "predict_error", "test error (%)")
        sections.append(
            f"### {plan}\n\n{text}\n"
            + (f"\nPaired differences (seeds where the variant is ahead):\n\n{paired}\n" if paired else "")
            + (f"\nTest error per seed (%), difference to CE on the same seed:\n\n{seeds}\n" if seeds else "")
        )
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
