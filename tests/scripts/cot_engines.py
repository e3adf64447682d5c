"""Helper for tests/trainers/test_engines.py: trains tiny causal-LM COT configurations under one engine, or as the reference.

``python cot_engines.py OUT --engine none --batch 2B`` is the single-process reference; under
``torch.distributed.run --nproc_per_node 2`` with ``--engine fsdp2|fsdp2_head_unit|zero2|zero3 --batch B`` each rank is
made an FSDP2 / DeepSpeed rank on gloo by the test-only patch in `cpu_engines`. SGD (AdamW only for the resume check),
so that a wrong gradient reduction shows at full size (an adaptive optimizer would normalize it away).

Per configuration, rank r writes to ``OUT/<name>/``: ``params.pt`` (rank 0: the full state dict, gathered by the
engine), ``logs_rank<r>.json`` (log history), ``eval_rank<r>.json`` (``evaluate()`` on 16 rows: loss only, so the
fused head serves it), ``info_rank<r>.json`` (engine facts: whether the head weight was really sharded, whether the
fused head was used, how often the head module's own ``nn.Linear.forward`` ran). ``--resume NAME`` also saves NAME at
step 2 and resumes it from there into ``OUT/NAME_resumed/``; ``--refused NAME`` records the exception its
construction raises (``refused_rank<r>.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_DISABLED", "true")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, ".."))

from cpu_engines import patch_accelerate_for_cpu_engines  # noqa: E402

patch_accelerate_for_cpu_engines()

import torch  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from hf_cot import COTTrainer, COTTrainingArguments  # noqa: E402
from testing_utils import causal_lm_data, prompt_completion, tiny_causal_lm, word_tokenizer, write_rank_json  # noqa: E402

# name -> (architecture, cot_mode, cot_fused_lm_head, gradient_accumulation_steps, max_steps, optim). "sft_*" run
# COTSFTTrainer (TRL) on prompt/completion data; the others COTTrainer on pre-tokenized rows.
CONFIGS = {
    "joint": ("llama", "joint", None, 1, 3, "sgd"),
    "guided_ga2": ("llama", "guided", None, 2, 2, "sgd"),
    "joint_tied": ("qwen2", "joint", None, 1, 3, "sgd"),  # the head is the input embedding
    "joint_logits": ("llama", "joint", False, 1, 3, "sgd"),
    "sft_joint": ("llama", "joint", None, 1, 3, "sgd"),
    "alternating": ("llama", "alternating", None, 1, 3, "sgd"),
    "alternating_ga2": ("llama", "alternating", None, 2, 2, "sgd"),
    # for resume: AdamW has optimizer state (moments, step) that a wrong checkpoint would lose
    "alternating_adamw": ("llama", "alternating", None, 1, 4, "adamw_torch"),
}

_ZERO = {
    "train_micro_batch_size_per_gpu": "auto",
    "gradient_accumulation_steps": "auto",
    "train_batch_size": "auto",
    "gradient_clipping": "auto",
    "zero_allow_untested_optimizer": True,  # plain SGD from the Trainer
}


def engine_kwargs(engine: str) -> dict:
    if engine == "none":
        return {"use_cpu": True}
    # sync_module_states: transformers 4.57 turns it on by default, and accelerate then asks torch.cuda/xpu/... for a
    # device to materialize parameters on, which a CPU has not (the models here are built whole on every rank anyway).
    if engine.startswith("fsdp2"):
        # transformers 4.x passes neither fsdp_config["version"] nor ["state_dict_type"] on to accelerate (5.x does):
        # set them the way `accelerate launch` with `fsdp_version: 2` / `fsdp_state_dict_type: ...` does.
        os.environ["FSDP_VERSION"] = "2"
        os.environ["FSDP_STATE_DICT_TYPE"] = "SHARDED_STATE_DICT" if engine == "fsdp2" else "FULL_STATE_DICT"
    if engine == "fsdp2":  # accelerate's default wrapping: decoder layers, embeddings, [final norm, head] together
        config = {"version": 2, "state_dict_type": "SHARDED_STATE_DICT", "sync_module_states": False}
        return {"fsdp": True, "fsdp_config": config}
    if engine == "fsdp2_head_unit":  # every nn.Linear, the head included, is an FSDP unit of its own
        # (accelerate 1.15's SIZE_BASED_WRAP cannot do this for a tiny model: it wraps the layers' ModuleList, which
        # fully_shard refuses, or the whole backbone, after which accelerate fails to carve out the final norm)
        config = {
            "version": 2,
            "transformer_layer_cls_to_wrap": ["LlamaDecoderLayer", "Linear"],
            "sync_module_states": False,
        }
        return {"fsdp": True, "fsdp_config": {**config, "state_dict_type": "FULL_STATE_DICT"}}
    if engine in ("zero2", "zero3"):
        zero = {"stage": int(engine[-1])}
        if engine == "zero3":  # tiny parameters would otherwise all stay unpartitioned
            zero.update(stage3_param_persistence_threshold=0, stage3_gather_16bit_weights_on_model_save=True)
        return {"deepspeed": {**_ZERO, "zero_optimization": zero}}
    raise ValueError(engine)


class HeadCalls:
    """Counts runs of ``nn.Linear.forward`` on one module (the LM head): the materialized logits. Not counted: the
    first batch's check against the model's own loss (`hf_cot.alignment_check`: two rows, without gradients), whose
    own forward builds two rows' logits on purpose."""

    def __init__(self):
        self.head, self.count = None, 0
        self._original = torch.nn.Linear.forward
        counter = self

        def forward(module, x):
            if module is counter.head and not (x.shape[0] == 2 and not torch.is_grad_enabled()):
                counter.count += 1
            return counter._original(module, x)

        torch.nn.Linear.forward = forward


class RecordHeadWeight(TrainerCallback):
    """At the start of training (the model is prepared by then): is the head's weight really sharded?"""

    def __init__(self, trainer):
        self.trainer, self.facts = trainer, {}

    def on_train_begin(self, *args, **kwargs):
        weight = self.trainer.model.get_output_embeddings().weight
        local = weight.to_local() if hasattr(weight, "to_local") else weight  # FSDP2: a DTensor
        self.facts = {
            "weight_type": type(weight).__name__,
            "local_numel": int(local.numel()),  # ZeRO-3: 0 outside a gather
            "full_numel": int(getattr(weight, "ds_numel", weight.numel())),
        }


def build(name, out, engine, batch, save_steps=None):
    arch, mode, fused, ga, max_steps, optim = CONFIGS[name]
    model = tiny_causal_lm(arch, seed=0)  # before the arguments: ZeRO-3 must not partition it at construction
    common = dict(
        output_dir=out, cot_mode=mode, cot_fused_lm_head=fused, complement_weight=0.7, guided_alpha=0.25,
        per_device_train_batch_size=batch // ga, per_device_eval_batch_size=4, gradient_accumulation_steps=ga,
        max_steps=max_steps, optim=optim, learning_rate=0.5 if optim == "sgd" else 1e-2, lr_scheduler_type="linear",
        warmup_steps=1, max_grad_norm=0.05 if mode == "alternating" else 1.0, seed=7, logging_steps=1,
        report_to="none", disable_tqdm=True, dataloader_num_workers=0, save_strategy="steps" if save_steps else "no",
        save_steps=save_steps or 500, **engine_kwargs(engine),
    )  # fmt: skip
    if name.startswith("sft_"):
        from hf_cot.trl import COTSFTConfig, COTSFTTrainer

        args = COTSFTConfig(**common, max_length=16, bf16=False, gradient_checkpointing=False, dataset_num_proc=None)
        return COTSFTTrainer(model=model, args=args, train_dataset=prompt_completion(n=32, seed=1),
                             eval_dataset=prompt_completion(n=16, seed=2), processing_class=word_tokenizer())  # fmt: skip
    return COTTrainer(model=model, args=COTTrainingArguments(**common), train_dataset=causal_lm_data(n=32, seed=1),
                      eval_dataset=causal_lm_data(n=16, seed=2))  # fmt: skip


def run(name, out_root, engine, batch, calls: HeadCalls, save_steps=None, resume_from=None, tag=None):
    out = os.path.join(out_root, tag or name)
    trainer = build(name, out, engine, batch, save_steps)
    model = trainer.model
    calls.head, calls.count = model.get_output_embeddings(), 0
    facts = RecordHeadWeight(trainer)
    trainer.add_callback(facts)
    trainer.train(resume_from_checkpoint=resume_from)
    train_calls = calls.count
    eval_metrics = trainer.evaluate()
    rank = trainer.args.process_index
    state = trainer.accelerator.get_state_dict(trainer.model_wrapped)
    os.makedirs(out, exist_ok=True)
    if rank == 0:
        torch.save({k: v.detach().float().cpu().clone() for k, v in state.items()}, os.path.join(out, "params.pt"))
    info = {
        "world_size": trainer.args.world_size,
        "distributed_type": str(trainer.accelerator.distributed_type),
        "fsdp": trainer.is_fsdp_enabled,
        "deepspeed": trainer.is_deepspeed_enabled,
        "fused": trainer._cot_fused,
        "head_forward_calls_train": train_calls,
        "head_forward_calls_eval": calls.count - train_calls,
        "global_step": trainer.state.global_step,
        "complement_steps": trainer.complement_steps,
        "state_dict_type": str(
            getattr(getattr(trainer.accelerator.state, "fsdp_plugin", None), "state_dict_type", None)
        ),
        **facts.facts,
    }
    write_rank_json(out, rank, logs=trainer.state.log_history, eval=eval_metrics, info=info)
    trainer.accelerator.wait_for_everyone()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--engine", required=True)
    parser.add_argument("--batch", type=int, required=True, help="rows per optimizer step per process")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS))
    parser.add_argument("--resume", nargs="*", default=[], help="configs to save at step 2 and resume from it")
    parser.add_argument("--refused", nargs="*", default=[], help="configs whose construction must raise")
    args = parser.parse_args()
    torch.set_num_threads(1)
    calls = HeadCalls()
    for name in args.refused:  # written as OUT/<name>/refused_rank<r>.json: the exception, or null if none
        out = os.path.join(args.out, name)
        try:
            build(name, out, args.engine, args.batch)
            error = None
        except Exception as err:  # noqa: BLE001 - the test checks the type and the message
            error = {"type": type(err).__name__, "message": str(err)}
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, f"refused_rank{os.environ.get('RANK', 0)}.json"), "w") as f:
            json.dump(error, f)
    for name in args.configs:
        run(name, args.out, args.engine, args.batch, calls, save_steps=2 if name in args.resume else None)
        if name in args.resume:
            ckpt = os.path.join(args.out, name, "checkpoint-2")
            run(name, args.out, args.engine, args.batch, calls, resume_from=ckpt, tag=f"{name}_resumed")


if __name__ == "__main__":
    main()
