"""Seconds per optimizer step: plain `transformers.Trainer` vs `COTTrainer` in each `cot_mode`, side by side.

Same model initialization, batch and seed for every variant; variants are *interleaved* (round-robin, several
rounds) in one process so that machine noise hits them alike. Each measurement trains a fresh trainer for
`--steps` optimizer steps and takes the median wall time between consecutive `on_step_end` callbacks after
`--warmup` steps. The report is the median over rounds and its ratio to the plain Trainer.

Targets (issue 5): alternating <= 2.05x (its floor is 2.0x: one extra forward and backward), joint and guided
<= 1.05x (floor 1.0x), complement_every=k close to 1 + 1/k.

    python benchmarks/bench_step.py                          # both models, CPU
    python benchmarks/bench_step.py --models classifier --rounds 5 --json out.json
    python benchmarks/bench_step.py --device cuda --fp16     # on a GPU
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import transformers
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertLMHeadModel,
    BertModel,
    EncoderDecoderModel,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from _provenance import provenance
from hf_cot import COTSeq2SeqTrainer, COTSeq2SeqTrainingArguments, COTTrainer, COTTrainingArguments

# all-MiniLM-L6-v2's shape (random init is fine for timing).
MINILM = dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536)

VARIANTS = {
    "plain Trainer": None,
    "alternating": {"cot_mode": "alternating"},
    "alternating every=2": {"cot_mode": "alternating", "complement_every": 2},
    "alternating every=4": {"cot_mode": "alternating", "complement_every": 4},
    "joint": {"cot_mode": "joint"},
    "guided": {"cot_mode": "guided"},
}
TARGETS = {
    "alternating": 2.05,
    "alternating every=2": 1.5 * 1.05,
    "alternating every=4": 1.25 * 1.05,
    "joint": 1.05,
    "guided": 1.05,
}


def build_classifier():
    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(**MINILM, num_labels=5))


def build_bert2bert():
    torch.manual_seed(0)
    encoder = BertModel(BertConfig(**MINILM))
    decoder = BertLMHeadModel(BertConfig(**MINILM, is_decoder=True, add_cross_attention=True))
    model = EncoderDecoderModel(encoder=encoder, decoder=decoder)
    model.config.decoder_start_token_id, model.config.pad_token_id, model.config.eos_token_id = 101, 0, 102
    return model


def classifier_data(n, seq_len, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "input_ids": torch.randint(1000, 30000, (seq_len,), generator=g),
            "attention_mask": torch.ones(seq_len, dtype=torch.long),
            "labels": int(torch.randint(0, 5, (1,), generator=g)),
        }
        for _ in range(n)
    ]


def seq2seq_data(n, seq_len, seed=0):
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        labels = torch.randint(1000, 30000, (seq_len,), generator=g)
        labels[int(torch.randint(seq_len // 2, seq_len, (1,), generator=g)) :] = -100
        rows.append(
            {
                "input_ids": torch.randint(1000, 30000, (seq_len,), generator=g),
                "attention_mask": torch.ones(seq_len, dtype=torch.long),
                "labels": labels,
            }
        )
    return rows


class StepTimer(TrainerCallback):
    def __init__(self):
        self.times = []

    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter())


def time_variant(kind, variant, init_state, data, opts) -> float:
    model = build_classifier() if kind == "classifier" else build_bert2bert()
    model.load_state_dict(init_state)
    seq2seq = kind == "seq2seq"
    common = dict(
        output_dir=tempfile.mkdtemp(),
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
        logging_steps=10_000,
        per_device_train_batch_size=opts.batch_size,
        max_steps=opts.warmup + opts.steps,
        use_cpu=opts.device == "cpu",
        fp16=opts.fp16,
        bf16=opts.bf16,
        dataloader_num_workers=0,
    )
    if variant is None:
        args_cls, trainer_cls = (Seq2SeqTrainingArguments, Seq2SeqTrainer) if seq2seq else (TrainingArguments, Trainer)
        args = args_cls(**common)
    else:
        args_cls, trainer_cls = (
            (COTSeq2SeqTrainingArguments, COTSeq2SeqTrainer) if seq2seq else (COTTrainingArguments, COTTrainer)
        )
        args = args_cls(**common, **variant)
    timer = StepTimer()
    trainer = trainer_cls(model=model, args=args, train_dataset=data, callbacks=[timer])
    trainer.train()
    deltas = [b - a for a, b in itertools.pairwise(timer.times)][opts.warmup - 1 :]
    return statistics.median(deltas) if opts.statistic == "median" else statistics.mean(deltas)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="classifier,seq2seq")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8, help="timed optimizer steps per measurement")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--seq_len", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--fp16", action="store_true")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument(
        "--statistic",
        choices=["median", "mean"],
        default="mean",
        help="per-measurement statistic over step times; 'mean' is right for complement_every=k",
    )
    parser.add_argument("--json", default=None)
    opts = parser.parse_args()

    variants = [v.strip() for v in opts.variants.split(",")]
    results = {
        **provenance(),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "device": torch.cuda.get_device_name() if opts.device == "cuda" else "cpu",
            "threads": torch.get_num_threads(),
        },
        "options": vars(opts),
        "models": {},
    }
    for kind in opts.models.split(","):
        init_state = (build_classifier() if kind == "classifier" else build_bert2bert()).state_dict()
        n = opts.batch_size * (opts.warmup + opts.steps)
        data = classifier_data(n, opts.seq_len) if kind == "classifier" else seq2seq_data(n, opts.seq_len // 2)
        samples = {v: [] for v in variants}
        for r in range(opts.rounds):
            for v in variants:
                samples[v].append(time_variant(kind, VARIANTS[v], init_state, data, opts))
                print(f"[{kind}] round {r + 1}/{opts.rounds} {v:>22s}: {samples[v][-1]:.3f} s/step", flush=True)
        base = statistics.median(samples["plain Trainer"])
        rows = {}
        for v in variants:
            sec = statistics.median(samples[v])
            rows[v] = {"s_per_step": sec, "ratio": sec / base, "target": TARGETS.get(v), "samples": samples[v]}
        results["models"][kind] = rows
        print(
            f"\n{kind} (batch {opts.batch_size}, seq {opts.seq_len if kind == 'classifier' else opts.seq_len // 2}, {results['machine']['device']})"
        )
        print("| variant | s/step | ratio vs plain | target | met |\n|---|---|---|---|---|")
        for v, row in rows.items():
            target = row["target"]
            met = "" if target is None else ("yes" if row["ratio"] <= target else "NO")
            print(
                f"| {v} | {row['s_per_step']:.3f} | {row['ratio']:.3f}x | {'' if target is None else f'<= {target:.3f}x'} | {met} |"
            )
        print()
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
