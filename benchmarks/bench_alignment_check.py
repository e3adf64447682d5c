"""What the first-batch check against the model's own loss costs (`hf_cot.alignment_check`), next to one COT step.

The check runs once per trainer: two forwards without gradients on two rows of the first batch (the model's own,
and hf-cot's on the path that trains: the fused LM head for the causal LM). Printed side by side
in one run: the check's time, one `joint` training step's time on the whole batch, and their ratio, for
all-MiniLM-L6-v2's shape (sequence classification, batch 16 x 64 tokens) and a Llama-style causal LM (batch 8 x 256
tokens, 32k vocabulary, fused LM head).

    python benchmarks/bench_alignment_check.py
"""

from __future__ import annotations

import statistics
import tempfile
import time

import torch
from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM

from hf_cot import COTTrainer, COTTrainingArguments
from hf_cot.alignment_check import FirstBatchCheck

MINILM = dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536)
LLAMA = dict(vocab_size=32000, hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=512)  # fmt: skip


def _cases():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 30522, (16, 64), generator=g)
    yield "MiniLM classification, 16 x 64", BertForSequenceClassification(BertConfig(**MINILM, num_labels=5)), {
        "input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.randint(0, 5, (16,), generator=g),
    }  # fmt: skip
    ids = torch.randint(0, 32000, (8, 256), generator=g)
    labels = ids.clone()
    labels[:, :64] = -100
    yield "Llama causal LM, 8 x 256, V = 32k", LlamaForCausalLM(LlamaConfig(**LLAMA)), {
        "input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
    }  # fmt: skip


def _median_seconds(fn, repeats: int = 3) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| model | check (s) | one joint step (s) | check / step |")
    print("|---|---|---|---|")
    for name, model, batch in _cases():
        with tempfile.TemporaryDirectory() as out:
            args = COTTrainingArguments(out, report_to=[], use_cpu=True, cot_mode="joint", disable_tqdm=True)
            trainer = COTTrainer(model=model, args=args)
            trainer.current_gradient_accumulation_steps = 1
            trainer._cot_first_batch.checked_model = trainer.model  # time the step alone
            step = _median_seconds(lambda t=trainer, m=model, b=batch: t.training_step(m, dict(b)))
            check = _median_seconds(lambda t=trainer, m=model, b=batch: FirstBatchCheck().check(m, dict(b), t))
        print(f"| {name} | {check:.3f} | {step:.3f} | {check / step:.3f} |")


if __name__ == "__main__":
    main()
