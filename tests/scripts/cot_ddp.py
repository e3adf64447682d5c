"""Helper for tests/trainers/test_distributed.py: trains several tiny COT configurations in ONE process group.

Run either on one process (``python cot_ddp.py OUT --batch 2B``) or under
``accelerate launch --multi_gpu --num_processes 2 cot_ddp.py OUT --batch B``. ``use_cpu=True`` is what turns a
torchrun-launched process into a MULTI_CPU (gloo) rank on a machine without GPUs; without it every rank would
silently train on its own as a single process.

For each configuration, every rank writes to ``OUT/<name>/``:

* ``params_rank<r>.pt``: the final parameters (CPU state dict of the unwrapped model);
* ``batches_rank<r>.json``: for each optimizer step, the dataset indices of the rows this rank consumed in that
  step's accumulation window (recorded by the collator, so by the real data loader);
* ``saves_rank<r>.json``: the basenames of every ``torch.save`` this rank made (to show who writes checkpoints);
* ``logs_rank<r>.json``: ``trainer.state.log_history``;
* ``eval_rank<r>.json``: ``trainer.evaluate()`` on the first 13 rows after training.

With ``--resume``, the configuration ``alternating`` saves checkpoints at steps 2 and 4 and is then resumed from its
``checkpoint-2`` into ``OUT/alternating_resumed/`` (transformers >= 5.18 only, see ``PARENT_RESUMES_MULTI_CPU``).
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_DISABLED", "true")

import torch
import transformers
from packaging import version

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from transformers.data.data_collator import default_data_collator  # noqa: E402

from hf_cot import COTSeq2SeqTrainer, COTSeq2SeqTrainingArguments, COTTrainer, COTTrainingArguments  # noqa: E402
from testing_utils import (  # noqa: E402
    causal_lm_data,
    classification_data,
    seq2seq_data,
    tiny_bert,
    tiny_llama,
    tiny_marian,
    write_rank_json,
)

# Before 5.18 the parent Trainer itself cannot resume a MULTI_CPU run: it loads optimizer.pt with
# map_location=args.device, i.e. "cpu:<rank>", which torch.load rejects (GPU ranks, "cuda:<rank>", are fine).
PARENT_RESUMES_MULTI_CPU = version.parse(transformers.__version__).release >= (5, 18)

# name -> (kind, cot_mode, gradient_accumulation_steps, max_steps)
CONFIGS = {
    "alternating": ("bert", "alternating", 1, 4),
    "alternating_ga2": ("bert", "alternating", 2, 2),
    "joint": ("bert", "joint", 1, 4),
    "seq2seq": ("marian", "alternating", 1, 3),
    # A causal LM with -100 prompts and padding: uneven valid-token counts per rank.
    "causal_lm": ("llama", "guided", 1, 3),
}


class RecordingCollator:
    """`default_data_collator` that remembers which dataset rows each micro-batch held (by their input_ids)."""

    def __init__(self, rows):
        self.index = {tuple(r["input_ids"].tolist()): i for i, r in enumerate(rows)}
        assert len(self.index) == len(rows), "rows must have distinct input_ids to be identified"
        self.micro_batches: list[list[int]] = []

    def __call__(self, features):
        self.micro_batches.append(sorted(self.index[tuple(f["input_ids"].tolist())] for f in features))
        return default_data_collator(features)


class SaveRecorder:
    """Wraps `torch.save` to log the basename of every file this process writes."""

    def __init__(self):
        self.names: list[str] = []
        self._orig = torch.save

    def __call__(self, obj, f, *args, **kwargs):
        if isinstance(f, (str, os.PathLike)):
            self.names.append(os.path.basename(os.fspath(f)))
        return self._orig(obj, f, *args, **kwargs)


def build(name: str, out: str, batch: int, save_steps: int | None):
    kind, mode, ga, max_steps = CONFIGS[name]
    common = dict(
        output_dir=out,
        use_cpu=True,
        cot_mode=mode,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=ga,
        max_steps=max_steps,
        learning_rate=1e-2,
        warmup_steps=1,
        lr_scheduler_type="linear",
        seed=7,
        logging_steps=1,
        report_to="none",
        save_strategy="steps" if save_steps else "no",
        save_steps=save_steps or 500,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    # kind -> (rows, model, trainer class, arguments class)
    rows, model, trainer_cls, args_cls = {
        "bert": (lambda: classification_data(n=32, num_labels=5), lambda: tiny_bert(num_labels=5, seed=0),
                 COTTrainer, COTTrainingArguments),
        "llama": (lambda: causal_lm_data(n=24), lambda: tiny_llama(seed=0), COTTrainer, COTTrainingArguments),
        "marian": (lambda: seq2seq_data(n=24), lambda: tiny_marian(seed=0), COTSeq2SeqTrainer,
                   COTSeq2SeqTrainingArguments),
    }[kind]  # fmt: skip
    rows = rows()
    collator = RecordingCollator(rows)
    trainer = trainer_cls(model=model(), args=args_cls(**common), train_dataset=rows, data_collator=collator)
    return trainer, collator, ga, max_steps


def run(name: str, out_root: str, batch: int, save_steps: int | None, resume_from: str | None = None, tag=None):
    out = os.path.join(out_root, tag or name)
    recorder = SaveRecorder()
    torch.save = recorder
    try:
        trainer, collator, ga, max_steps = build(name, out, batch, save_steps)
        trainer.train(resume_from_checkpoint=resume_from)
    finally:
        torch.save = recorder._orig
    rank = trainer.args.process_index
    os.makedirs(out, exist_ok=True)
    # The loader prefetches one batch ahead; keep the micro-batches of the steps actually run, grouped per step.
    micro = collator.micro_batches
    steps = [sorted(sum(micro[s * ga : (s + 1) * ga], [])) for s in range(len(micro) // ga)][:max_steps]
    # 13 rows: with 2 ranks the sampler pads the last batch with repeated rows, which the metrics must not count.
    eval_metrics = trainer.evaluate(trainer.train_dataset[:13])
    state = {k: v.detach().cpu().clone() for k, v in trainer.model.state_dict().items()}
    torch.save(state, os.path.join(out, f"params_rank{rank}.pt"))
    info = {
        "world_size": trainer.args.world_size,
        "distributed_type": str(trainer.accelerator.distributed_type),
        "complement_steps": trainer.complement_steps,
        "complement_scheduler_last_epoch": getattr(trainer.complement_lr_scheduler, "last_epoch", None),
        "global_step": trainer.state.global_step,
    }
    write_rank_json(
        out, rank, batches=steps, saves=recorder.names, logs=trainer.state.log_history, eval=eval_metrics, info=info
    )
    trainer.accelerator.wait_for_everyone()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--batch", type=int, required=True, help="per-device batch size (for GA configs: halved)")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS))
    parser.add_argument("--resume", action="store_true", help="save alternating at step 2 and resume from it")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for name in args.configs:
        ga = CONFIGS[name][2]
        save_steps = 2 if (args.resume and name == "alternating") else None
        run(name, args.out, args.batch // ga, save_steps)
    if args.resume and PARENT_RESUMES_MULTI_CPU:
        ckpt = os.path.join(args.out, "alternating", "checkpoint-2")
        run("alternating", args.out, args.batch, None, resume_from=ckpt, tag="alternating_resumed")


if __name__ == "__main__":
    main()
