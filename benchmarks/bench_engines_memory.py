"""FSDP2 per-rank memory (CPU, 2 ranks): peak resident memory of one rank while COT and plain SFT train under FSDP2.

Variants, all with the same FSDP2 configuration (``fsdp=True, fsdp_config={"version": 2}``: accelerate's default
wrapping) and the same random-init Llama-shaped causal LM, batch, optimizer and steps:

* ``cot_fused`` (a): ``hf_cot.trl.COTSFTTrainer`` with ``COTSFTConfig(cot_mode="joint")`` and the fused LM head (the
  default, ``cot_fused_lm_head=None``; ``trainer._cot_fused`` is recorded and must be True).
* ``cot_logits`` (b): the same with ``cot_fused_lm_head=False`` (the ``[tokens, vocab]`` logits are built).
* ``trl_sft`` (c): TRL's plain ``SFTTrainer`` with ``SFTConfig`` (TRL's own defaults for its loss: on TRL 1.16 that is
  ``loss_type="nll"`` through its patched ``fused_lm_head=True`` forward, a chunked log-prob kernel). Which path ran is
  recorded: calls of TRL's ``_ChunkedLogProbFunction`` and of the head module's own ``nn.Linear.forward`` (the
  materialized logits).

Each (variant, vocabulary) cell is a **fresh 2-process launch** (``python -m torch.distributed.run --nproc_per_node 2
this_script.py --rank-worker SPEC``), one after the other; the order of the variants rotates from vocabulary to
vocabulary. In every rank, memory is read with ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (the rank's own peak
resident set; Linux reports KiB):

* **baseline** = the *current* RSS (``/proc/self/statm``) right before ``trainer.train()``, after the model, data and
  trainer are built (the model is still whole on every rank at that point: FSDP2 shards it inside ``train()``);
* **peak** = ``ru_maxrss`` after ``train()``; **growth** = peak - baseline. If the peak was already reached before the
  baseline (``peak_before_baseline``), the growth is a lower bound.
* also recorded: the RSS at the first ``on_step_begin`` (after accelerate has sharded the model and built the
  optimizer), and the type / local size of the head's weight there (a DTensor holding half the rows when sharded).

The figure is per rank, the table shows the larger of the two ranks. Target: (a) <= 1.15x (c) per rank.

TEST-ONLY PATCH: accelerate 1.15 turns FSDP on only for GPU-like distributed types, never for MULTI_CPU, so on a
machine without GPUs a ``torchrun`` of a Trainer with ``fsdp=True`` refuses or trains two unsharded copies. Each rank
therefore calls ``patch_accelerate_for_cpu_engines()`` from ``tests/scripts/cpu_engines.py`` before the config is
built: it makes accelerate report the rank as MULTI_GPU on the gloo backend with the CPU as its device, which is enough
for FSDP2's ``fully_shard`` to shard for real. That patch exists only so that FSDP2 can be exercised on CPU (tests and
this benchmark); never use it for real training (see docs/testing.md, "The engines on CPU"). The numbers are therefore
CPU + gloo numbers: they say how the per-rank memory of the three losses compare under real FSDP2 sharding, not what a
GPU run with NCCL would allocate.

    nice -n 10 python benchmarks/bench_engines_memory.py --json benchmarks/bench_engines_memory_cpu.json  # 6 launches, ~5 min
    python benchmarks/bench_engines_memory.py --quick                                  # smoke run, tiny model, ~1.5 min
    python benchmarks/bench_engines_memory.py --from-json benchmarks/bench_engines_memory_cpu.json     # tables only
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_DISABLED", "true")

from _common import MIB, MemoryBaseline, fmt_mib, llama_sft_inputs, loadavg, machine_info, rss_now, rss_peak, sft_args

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SCRIPTS = os.path.join(ROOT, "tests", "scripts")  # the test-only launcher and accelerate patch (see the docstring)

VARIANTS = ("cot_fused", "cot_logits", "trl_sft")
LABELS = {
    "cot_fused": "(a) COTSFTTrainer joint, fused head",
    "cot_logits": "(b) COTSFTTrainer joint, logits",
    "trl_sft": "(c) TRL SFTTrainer (plain)",
}
TARGET = 1.15  # (a) / (c), per rank


# ------------------------------------------------------------------------------------------------ the rank worker
def rank_worker(spec: dict) -> None:
    """One rank of one launch: build, train under FSDP2, write ``OUT/rank<r>.json``."""
    sys.path.insert(0, SCRIPTS)
    from cpu_engines import patch_accelerate_for_cpu_engines  # TEST-ONLY: see the module docstring

    patch_accelerate_for_cpu_engines()  # before any TrainingArguments is built

    import torch
    import trl.trainer.utils as trl_utils
    from transformers import TrainerCallback

    torch.set_num_threads(spec["threads"])
    m = spec["model"]
    world = int(os.environ.get("WORLD_SIZE", 1))
    # the same weights on both ranks (FSDP2 keeps each rank's shard of them)
    model, tokenizer, data = llama_sft_inputs(m, spec["seq_len"], spec["batch_size"] * spec["steps"] * world)
    head = model.get_output_embeddings()
    variant = spec["variant"]
    args, trainer_cls = sft_args(
        variant == "trl_sft",
        None if variant == "cot_fused" else False,
        output_dir=spec["output_dir"],
        per_device_train_batch_size=spec["batch_size"],
        max_steps=spec["steps"],
        optim=spec["optim"],
        learning_rate=1e-3,
        max_length=spec["seq_len"],
        fsdp=True,
        fsdp_config={"version": 2},  # the same FSDP2 configuration for every variant
    )

    # Which loss path ran: TRL's chunked log-prob kernel, and the head module's own forward (the full logits).
    counts = {"trl_chunked_logprob_calls": 0, "head_linear_forward_calls": 0}
    original_apply = trl_utils._ChunkedLogProbFunction.apply

    def counting_apply(*a, **k):
        counts["trl_chunked_logprob_calls"] += 1
        return original_apply(*a, **k)

    trl_utils._ChunkedLogProbFunction.apply = staticmethod(counting_apply)
    original_linear_forward = torch.nn.Linear.forward

    def linear_forward(module, x):
        if module is head:
            counts["head_linear_forward_calls"] += 1
        return original_linear_forward(module, x)

    torch.nn.Linear.forward = linear_forward

    class Probe(TrainerCallback):
        def __init__(self):
            self.stamps, self.facts = [], {}

        def on_step_begin(self, args, state, control, **kwargs):
            if not self.facts:  # first step: the model is sharded and the optimizer built
                weight = trainer.model.get_output_embeddings().weight
                local = weight.to_local() if hasattr(weight, "to_local") else weight
                self.facts = {
                    "rss_at_first_step_mib": rss_now() / MIB,
                    "peak_at_first_step_mib": rss_peak() / MIB,
                    "model_class": type(trainer.model_wrapped).__name__,
                    "head_weight_type": type(weight).__name__,
                    "head_weight_local_numel": int(local.numel()),
                    "head_weight_full_numel": int(weight.numel()),
                }
                self.stamps.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            self.stamps.append(time.perf_counter())

    probe = Probe()
    trainer = trainer_cls(model=model, args=args, train_dataset=data, processing_class=tokenizer, callbacks=[probe])
    base = MemoryBaseline()
    baseline, peak_before = base.current, base.peak
    start = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - start
    peak = rss_peak()
    step_times = [b - a for a, b in zip(probe.stamps, probe.stamps[1:], strict=False)]
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    result = {
        "variant": variant,
        "rank": trainer.args.process_index,
        "world_size": trainer.args.world_size,
        "distributed_type": str(trainer.accelerator.distributed_type),
        "fsdp_enabled": trainer.is_fsdp_enabled,
        "fsdp_version": getattr(trainer.accelerator.state.fsdp_plugin, "fsdp_version", None),
        "cot_fused": getattr(trainer, "_cot_fused", None),
        "trl_loss_type": getattr(trainer.args, "loss_type", None),
        **counts,
        "baseline_rss_mib": baseline / MIB,
        "peak_before_baseline_mib": peak_before / MIB,
        "peak_rss_mib": peak / MIB,
        "growth_mib": (peak - baseline) / MIB,
        "peak_before_baseline": peak <= peak_before,
        **probe.facts,
        "train_s": train_s,
        "step_times_s": step_times,
        "losses": losses,
        "first_loss": losses[0] if losses else None,
        "rows_through_head": spec["batch_size"] * (spec["seq_len"] - 1),
        "parameters": sum(p.numel() for p in model.parameters()),
        "threads": torch.get_num_threads(),
    }
    with open(os.path.join(spec["result_dir"], f"rank{result['rank']}.json"), "w") as f:
        json.dump(result, f)
    trainer.accelerator.wait_for_everyone()


# ---------------------------------------------------------------------------------------------------- launching
def launch(spec: dict, timeout: int) -> dict:
    """One fresh 2-process launch of one (variant, vocabulary) cell; returns its per-rank results or the error."""
    sys.path.insert(0, SCRIPTS)
    from cpu_engines import launch_command, run

    result_dir = tempfile.mkdtemp(prefix="bench_engines_")
    spec = {**spec, "result_dir": result_dir, "output_dir": os.path.join(result_dir, "out")}
    cmd = launch_command(os.path.abspath(__file__), ["--rank-worker", json.dumps(spec)], nproc=spec["nproc"])
    started = time.perf_counter()
    # On a timeout `run` SIGTERMs the launcher, which stops its ranks (SIGKILL after its 30 s grace); the rank files
    # written by then are read below all the same.
    proc = run(cmd, timeout)
    rc = proc.returncode
    wall = time.perf_counter() - started
    ranks = []
    for r in range(spec["nproc"]):
        path = os.path.join(result_dir, f"rank{r}.json")
        if os.path.exists(path):
            with open(path) as f:
                ranks.append(json.load(f))
    shutil.rmtree(result_dir, ignore_errors=True)
    launcher = " ".join(os.path.basename(c) if c == sys.executable else c for c in cmd[1:5])
    out = {"command": f"python {launcher} {os.path.relpath(cmd[-3], ROOT)} --rank-worker '<spec>'", "spec": spec,
           "wall_s": wall, "returncode": rc, "ranks": ranks}  # fmt: skip
    if rc != 0 or len(ranks) != spec["nproc"]:
        out["error"] = (proc.stdout + proc.stderr)[-20000:]
    return out


def summarize(cell: dict) -> dict | None:
    ranks = cell.get("ranks") or []
    if "error" in cell or not ranks:
        return None
    return {
        "peak_rss_mib": max(r["peak_rss_mib"] for r in ranks),
        "growth_mib": max(r["growth_mib"] for r in ranks),
        "baseline_rss_mib": max(r["baseline_rss_mib"] for r in ranks),
        "first_loss": ranks[0]["first_loss"],
        "last_step_s": ranks[0]["step_times_s"][-1] if ranks[0]["step_times_s"] else None,
    }


def _ratio(a, b, key):
    return a[key] / b[key] if a and b and b[key] > 0 else None


def tables(results: dict) -> str:
    lines = [
        "| vocab | variant | fused | TRL path | head weight at step 1 (rank 0) | baseline RSS | peak RSS rank 0 / 1 "
        "| growth rank 0 / 1 | first loss | last step |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    ratio_lines = [
        "| vocab | peak (a)/(c) | growth (a)/(c) | peak (a)/(b) | growth (a)/(b) | growth (b)/(c) |",
        "|---|---|---|---|---|---|",
    ]
    for vocab, cells in results["cells"].items():
        for v in VARIANTS:
            cell = cells.get(v)
            if cell is None:
                continue
            if "error" in cell or not cell["ranks"]:
                last = (cell.get("error") or "").strip().splitlines()[-1:] or ["?"]
                lines.append(f"| {vocab} | {LABELS[v]} | FAILED: {last[0][:120]} | | | | | | | |")
                continue
            r0 = cell["ranks"][0]
            path = (f"chunked log-prob x{r0['trl_chunked_logprob_calls']}, head fwd x{r0['head_linear_forward_calls']}"
                    if v == "trl_sft" else f"head fwd x{r0['head_linear_forward_calls']}")  # fmt: skip
            head = (f"{r0.get('head_weight_type')} {r0.get('head_weight_local_numel', 0) / 1e6:.1f}M of "
                    f"{r0.get('head_weight_full_numel', 0) / 1e6:.1f}M")  # fmt: skip
            peaks = " / ".join(fmt_mib(r["peak_rss_mib"]) for r in cell["ranks"])
            growth = " / ".join(
                fmt_mib(r["growth_mib"]) + ("*" if r["peak_before_baseline"] else "") for r in cell["ranks"]
            )
            s = summarize(cell)
            lines.append(
                f"| {vocab} | {LABELS[v]} | {r0['cot_fused']} | {path} | {head} | {fmt_mib(r0['baseline_rss_mib'])} "
                f"| {peaks} | {growth} | {r0['first_loss']:.6f} | {s['last_step_s']:.1f} s |"
            )
        a, b, c = (summarize(cells[v]) if v in cells else None for v in VARIANTS)

        def fmt(x, target=False):
            if x is None:
                return "n/a"
            return f"{x:.3f}x" + ((" (met)" if x <= TARGET else " (NOT met)") if target else "")

        ratio_lines.append(
            f"| {vocab} | {fmt(_ratio(a, c, 'peak_rss_mib'), True)} | {fmt(_ratio(a, c, 'growth_mib'), True)} "
            f"| {fmt(_ratio(a, b, 'peak_rss_mib'))} | {fmt(_ratio(a, b, 'growth_mib'))} "
            f"| {fmt(_ratio(b, c, 'growth_mib'))} |"
        )
    note = "ratios use the larger rank of each launch; * = growth is a lower bound (peak reached before the baseline)"
    return "\n".join(lines) + "\n\n" + "\n".join(ratio_lines) + f"\n\n({note}; target (a)/(c) <= {TARGET}x)"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rank-worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--json", default=None, help="write results and provenance here")
    parser.add_argument("--from-json", default=None, help="measure nothing: print the tables of a JSON")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny model and vocabulary, short sequences")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--vocabs", default="32000,128256", help="comma-separated vocabulary sizes")
    parser.add_argument("--nproc", type=int, default=2, help="ranks per launch")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads per rank")
    parser.add_argument("--batch-size", type=int, default=4, help="sequences per rank per step")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps")
    parser.add_argument("--optim", default="adamw_torch")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--intermediate", type=int, default=688)
    parser.add_argument("--timeout", type=int, default=290, help="seconds per launch")
    opts = parser.parse_args(argv)

    if opts.rank_worker:
        rank_worker(json.loads(opts.rank_worker))
        return 0
    if opts.from_json:
        print(tables(json.load(open(opts.from_json))))
        return 0
    if opts.quick:
        opts.vocabs, opts.seq_len, opts.steps, opts.hidden, opts.intermediate = "4096", 64, 1, 64, 128

    sys.path.insert(0, HERE)
    from _provenance import provenance

    info = machine_info(("torch", "transformers", "accelerate", "trl"), memory=True)
    info["loadavg_at_start"] = loadavg()
    print("machine:", json.dumps(info), flush=True)
    options = {k: v for k, v in vars(opts).items() if k not in ("rank_worker", "from_json")}
    results = {**provenance(), "machine": info, "options": options, "cells": {}}
    variants = [v.strip() for v in opts.variants.split(",") if v.strip()]
    started = time.perf_counter()
    for i, vocab in enumerate(int(v) for v in opts.vocabs.split(",")):
        model = dict(
            vocab=vocab, hidden=opts.hidden, layers=opts.layers, heads=opts.heads, intermediate=opts.intermediate
        )
        cells = results["cells"].setdefault(str(vocab), {})
        for v in variants[i % len(variants) :] + variants[: i % len(variants)]:  # rotate the order per vocabulary
            spec = dict(variant=v, model=model, batch_size=opts.batch_size, seq_len=opts.seq_len, steps=opts.steps,
                        optim=opts.optim, threads=opts.threads, nproc=opts.nproc)  # fmt: skip
            cell = launch(spec, opts.timeout)
            cells[v] = cell
            if "error" in cell:
                print(f"  V={vocab} {LABELS[v]}: FAILED (rc {cell['returncode']}, {cell['wall_s']:.0f} s)\n"
                      f"{cell['error']}", flush=True)  # fmt: skip
                continue
            ranks = cell["ranks"]
            print(
                f"  V={vocab} {LABELS[v]}: peak {' / '.join(fmt_mib(r['peak_rss_mib']) for r in ranks)}, growth "
                f"{' / '.join(fmt_mib(r['growth_mib']) for r in ranks)}, fused={ranks[0]['cot_fused']}, "
                f"first loss {ranks[0]['first_loss']:.6f}, launch {cell['wall_s']:.0f} s",
                flush=True,
            )
    info["loadavg_at_end"] = loadavg()
    results["wall_s"] = time.perf_counter() - started
    print("\n" + tables(results))
    print(f"\ntotal {results['wall_s'] / 60:.1f} min; load average at start {info['loadavg_at_start']}, "
          f"end {info['loadavg_at_end']}")  # fmt: skip
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(results, f, indent=2)
    failed = any("error" in c for cells in results["cells"].values() for c in cells.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
