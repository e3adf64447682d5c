#!/usr/bin/env python
"""Cross-entropy vs Complement Objective Training on the embedded classification default, side by side.

Fine-tunes all-MiniLM-L6-v2 on BBC News (5 topics) twice, offline, with the same seed, data order and budget:
once with the plain `transformers.Trainer` (CE) and once with `hf_cot.COTTrainer` (COT, `--cot_mode joint`, the
library's default, unless told otherwise). Then prints, and writes to <output_dir>/comparison.{json,md}, the test-set accuracy, macro-F1,
complement entropy (how flat the wrong classes are; COT maximizes it), accuracy under an FGSM attack on the input
embeddings, and wall time. The default budget is 1 epoch over the 1,489 training articles, 64 tokens (the title and the
first lines, enough for the topic), batch 16: 94 steps per run; see the README for its measured wall time.
`scripts/demo.sh` runs it after setting up the environment.

    python examples/text-classification/compare_ce_cot.py [--num_train_epochs 3] [--cot_mode alternating] [--help]

Everything but the two trainer/argument classes comes from run_classification.py, so the two runs differ only there.
"""

import argparse
import json
import math
import os
import sys
import time
import warnings

import datasets
import transformers
from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments, set_seed

from hf_cot import COTTrainer, COTTrainingArguments

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run_classification as rc  # noqa: E402


class Progress(TrainerCallback):
    """One short line per logging step (the tqdm bar is off: it garbles logs captured to a file)."""

    def __init__(self, name):
        self.name, self.start = name, time.time()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            extra = f"  complement_entropy {logs['complement_entropy']:.3f}" if "complement_entropy" in logs else ""
            print(f"  [{self.name}] step {state.global_step:>4}/{state.max_steps}  loss {logs['loss']:.4f}{extra}"
                  f"  ({time.time() - self.start:.0f} s)", flush=True)  # fmt: skip


def run(name, trainer_class, args_class, opts, data):
    """Train one model from the same seed and evaluate it; returns the row of the comparison table."""
    model_args, data_args, label_list, (train, _, test) = data
    extra = {"cot_mode": opts.cot_mode} if args_class is COTTrainingArguments else {}
    training_args = args_class(
        output_dir=os.path.join(opts.output_dir, name.lower()),
        do_train=True,
        do_predict=True,
        num_train_epochs=opts.num_train_epochs,
        per_device_train_batch_size=opts.batch_size,
        per_device_eval_batch_size=64,
        learning_rate=opts.learning_rate,
        # 10% warm-up, as an integer: transformers 4.x has no float warmup_steps and 5.x no warmup_ratio.
        warmup_steps=max(1, int(0.1 * math.ceil(len(train) / opts.batch_size) * opts.num_train_epochs)),
        seed=opts.seed,
        logging_steps=10,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        **extra,
    )
    print(f"\n== {name}: {trainer_class.__name__}, {len(train)} train / {len(test)} test examples", flush=True)
    start = time.time()
    set_seed(opts.seed)  # same classification-head init for both runs
    model, tokenizer = rc.load_model_and_tokenizer(model_args, label_list)
    trainer = trainer_class(
        model=model,
        args=training_args,
        train_dataset=train,
        compute_metrics=rc.build_compute_metrics(len(label_list)),
        processing_class=tokenizer,
        data_collator=rc.build_data_collator(tokenizer, data_args, training_args),
        callbacks=[Progress(name)],
    )
    trainer.remove_callback(PrinterCallback)  # Progress prints a shorter line instead of the raw log dict
    metrics = rc.train_evaluate_predict(trainer, data_args, model_args, None, train, None, test)
    row = {
        "method": name,
        "trainer": trainer_class.__name__,
        "accuracy": metrics["predict_accuracy"],
        "macro_f1": metrics["predict_macro_f1"],
        "complement_entropy": metrics["predict_complement_entropy"],
    }
    row.update({f"fgsm_acc@{eps:g}": metrics[f"fgsm_accuracy_eps_{eps:g}"] for eps in data_args.fgsm_epsilon_list})
    row["train_s"] = round(metrics["train_runtime"], 1)
    row["wall_s"] = round(time.time() - start, 1)
    print(f"  [{name}] done in {row['wall_s']:.0f} s: test accuracy {row['accuracy']:.4f}", flush=True)
    return row


def to_markdown(rows):
    keys = list(rows[0])
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) and not isinstance(v, bool) and v < 10 else str(v)  # noqa: E731
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(row[k]) for k in keys) + " |" for row in rows]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", default="runs/ce_vs_cot")
    parser.add_argument("--cot_mode", default="joint", choices=["alternating", "joint", "guided"])
    parser.add_argument("--num_train_epochs", type=float, default=1.0)
    parser.add_argument("--max_train_samples", type=int, default=None, help="Default: the whole train split.")
    parser.add_argument("--max_predict_samples", type=int, default=None, help="Default: the whole test split.")
    parser.add_argument("--max_seq_length", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--learning_rate", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--fgsm_epsilons", default="0.01,0.03")
    opts = parser.parse_args(argv)
    # The table is the output: keep load reports, progress bars and the CPU-only pin_memory warning out of it.
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    warnings.filterwarnings("ignore", message=".*pin_memory.*no accelerator is found")

    model_args = rc.ModelArguments()
    data_args = rc.DataTrainingArguments(
        max_seq_length=opts.max_seq_length,
        max_train_samples=opts.max_train_samples,
        max_predict_samples=opts.max_predict_samples,
        fgsm_epsilons=opts.fgsm_epsilons,
    )
    # Tokenized once, shared by both runs: same examples, same order (the Trainer's sampler is seeded).
    tokenize_args = TrainingArguments(output_dir=opts.output_dir, do_train=True, do_predict=True, report_to=[])
    raw_datasets = rc.load_raw_datasets(model_args, data_args)
    label_list = rc.get_label_list(raw_datasets, data_args.label_column_name)
    _, tokenizer = rc.load_model_and_tokenizer(model_args, label_list)
    splits = rc.preprocess_datasets(raw_datasets, tokenizer, label_list, data_args, tokenize_args)
    data = (model_args, data_args, label_list, splits)

    print(
        f"CE vs COT ({opts.cot_mode}): MiniLM-L6 on BBC News, {opts.num_train_epochs:g} epoch(s), "
        f"{opts.max_seq_length} tokens, batch {opts.batch_size}, lr {opts.learning_rate:g}, seed {opts.seed}",
        flush=True,
    )
    rows = [
        run("CE", Trainer, TrainingArguments, opts, data),
        run("COT", COTTrainer, COTTrainingArguments, opts, data),
    ]
    table = to_markdown(rows)
    print("\nTest set (BBC News, 5 classes):\n" + table, flush=True)
    os.makedirs(opts.output_dir, exist_ok=True)
    with open(os.path.join(opts.output_dir, "comparison.json"), "w") as f:
        json.dump({"settings": vars(opts), "results": rows}, f, indent=2)
    with open(os.path.join(opts.output_dir, "comparison.md"), "w") as f:
        f.write(f"CE vs COT ({opts.cot_mode}), settings: `{json.dumps(vars(opts))}`\n\n{table}\n")
    print(f"\nwritten to {opts.output_dir}/comparison.json and comparison.md")
    return rows


if __name__ == "__main__":
    main()
