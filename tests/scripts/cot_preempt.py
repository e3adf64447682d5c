"""Helper for tests/trainers/test_preemption.py: uninterrupted, SIGKILLed and resumed COT runs of a tiny BERT.

``python cot_preempt.py ROOT full   CONFIG...``  trains each configuration to the end in ``ROOT/full/<config>``;
``python cot_preempt.py ROOT kill   CONFIG``     trains in ``ROOT/preempted/<config>`` and SIGKILLs its own process at
                                                the end of optimizer step ``kill_at`` (after ``checkpoint-<save>``
                                                was written, before the next checkpoint);
``python cot_preempt.py ROOT resume CONFIG...``  resumes each ``ROOT/preempted/<config>`` with
                                                ``resume_from_checkpoint=True`` (its last checkpoint).

Each finished run writes ``final.pt`` (state dict) and ``info.json`` (the optimizer steps this process ran, the
complement step counter and the complement scheduler position) into its folder.
"""

from __future__ import annotations

import json
import os
import signal
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_DISABLED", "true")

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from transformers import TrainerCallback  # noqa: E402

from hf_cot import COTTrainer, COTTrainingArguments  # noqa: E402
from testing_utils import classification_data, tiny_bert  # noqa: E402

# name -> dict(ga, complement_every, save_steps, kill_at, max_steps). 16 rows, so an epoch is 4 steps at GA 1
# (batch 4) and 2 steps at GA 2: every resume crosses an epoch boundary after restarting mid-epoch or at one.
CONFIGS = {
    "ga1": dict(ga=1, complement_every=1, save_steps=3, kill_at=5, max_steps=7),
    "ga2": dict(ga=2, complement_every=1, save_steps=3, kill_at=4, max_steps=6),
    "every2": dict(ga=1, complement_every=2, save_steps=3, kill_at=5, max_steps=7),
}


class StepRecorder(TrainerCallback):
    def __init__(self, kill_at: int | None):
        self.kill_at = kill_at
        self.steps: list[int] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(state.global_step)
        if state.global_step == self.kill_at:
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)


def run(out: str, config: str, kill: bool, resume: bool) -> None:
    c = CONFIGS[config]
    args = COTTrainingArguments(
        output_dir=out,
        use_cpu=True,
        cot_mode="alternating",
        complement_every=c["complement_every"],
        per_device_train_batch_size=4,
        gradient_accumulation_steps=c["ga"],
        max_steps=c["max_steps"],
        learning_rate=1e-2,
        warmup_steps=2,
        lr_scheduler_type="linear",
        seed=11,
        logging_steps=1,
        save_strategy="steps",
        save_steps=c["save_steps"],
        report_to="none",
        disable_tqdm=True,
    )
    recorder = StepRecorder(c["kill_at"] if kill else None)
    trainer = COTTrainer(
        model=tiny_bert(num_labels=5, seed=0),
        args=args,
        train_dataset=classification_data(n=16, num_labels=5, seed=3),
        callbacks=[recorder],
    )
    trainer.train(resume_from_checkpoint=True if resume else None)
    torch.save({k: v.detach().clone() for k, v in trainer.model.state_dict().items()}, os.path.join(out, "final.pt"))
    info = {
        "steps_run": recorder.steps,
        "complement_steps": trainer.complement_steps,
        "complement_skipped_steps": trainer.complement_skipped_steps,
        "complement_scheduler_last_epoch": trainer.complement_lr_scheduler.last_epoch,
        "complement_lr": trainer.complement_optimizer.param_groups[0]["lr"],
        "lr": trainer.optimizer.param_groups[0]["lr"],
    }
    with open(os.path.join(out, "info.json"), "w") as f:
        json.dump(info, f)


def main() -> None:
    root, mode, *configs = sys.argv[1:]
    torch.set_num_threads(1)
    for config in configs:
        sub = "full" if mode == "full" else "preempted"
        run(os.path.join(root, sub, config), config, kill=mode == "kill", resume=mode == "resume")


if __name__ == "__main__":
    main()
