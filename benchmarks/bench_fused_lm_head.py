"""Fused LM head (issue 13): memory and time of the COT terms computed from the hidden states, chunk by chunk through
the head (`hf_cot.linear_losses`), against building the ``[N, V]`` logits; and a whole TRL SFT training step.

Two parts (``--part loss|step|all``):

* **loss** (function level): forward + backward of ``CE + (-complement entropy)`` through the head, summed over N
  rows, for a grid of ``N x V x d`` cells. ``hidden [N, d]`` and ``weight [V, d]`` are float32 leaves that both need
  gradients (as in a model: the backbone's output and ``lm_head.weight``); labels uniform in ``[0, V)``; the weight
  is scaled so that the logits are ``~ N(0, 3^2)``.

  - ``fused``: ``t = linear_complement_terms(hidden, weight, labels)``,
    ``loss = -t["log_probs"].sum() - t["complement_entropy"].sum()`` (default chunk size, or ``--chunk-sizes``).
  - ``materialized``: ``z = hidden @ weight.T``,
    ``loss = F.cross_entropy(z, labels, reduction="sum") - complement_entropy(z, labels, reduction="sum")``.

* **step** (whole optimizer step): a small random-init Llama (hidden 256, 2 layers, 4 heads, intermediate 688,
  vocabulary 128,256, untied head), fp32, AdamW, batch 4 x 256 tokens of pre-tokenized synthetic text (every
  position is a label: N = 4 x 255 rows through the head), no gradient checkpointing. Variants: TRL's plain
  ``SFTTrainer`` (its own chunked fused head for the NLL), ``COTSFTTrainer`` joint with ``cot_fused_lm_head=None``
  (fused) and with ``cot_fused_lm_head=False`` (materialized logits).

Every measurement runs in a **fresh subprocess** (this script with ``--worker``), one after the other, so that the
peak memory of one variant never hides another's; the order of the variants rotates from cell to cell / round to
round.

* **Extra peak memory** = ``ru_maxrss`` (``resource.getrusage(RUSAGE_SELF)``, the process's peak resident set) at the
  end minus the *current* RSS (``/proc/self/statm``) at the baseline: after the inputs are allocated (loss), after the
  model, data and trainer are built (step). The step figure covers the whole ``train()``: gradients, AdamW's two
  state buffers (allocated at the first step) and the activations, plus the head's work. If the end peak equals the
  peak already reached before the baseline, the figure is a lower bound (flagged ``peak_before_baseline``).
* **Time**: loss: median of ``--repeats`` fwd+bwd wall times after one untimed warm-up, in the same subprocess (after
  the memory baseline; the warm-up and timed runs all count toward the peak). Step: a ``TrainerCallback`` stamps
  ``on_step_end``; median of the ``--steps`` step times after ``--warmup`` steps; the table shows the median over
  ``--rounds`` fresh subprocesses per variant.

Targets (issue 13): loss: fused extra memory <= 1/4 of the materialized path at V >= 32k, fused time <= 1.5x the
materialized path (CPU). Step: COT joint fused within 1.15x the memory and 1.3x the time of TRL's plain SFT step.
Sanity: the first-step ``loss`` of the three step variants agree (same weights, same batch; the COT trainers report
the cross-entropy).

    python benchmarks/bench_fused_lm_head.py --json benchmarks/bench_fused_lm_head_cpu.json \\
        --plot benchmarks/fused_lm_head_memory.png                        # both parts (~15 min on 2 CPU cores)
    python benchmarks/bench_fused_lm_head.py --part loss --cells 1024x128000x256 --chunk-sizes 64,128,256,512,1024
    python benchmarks/bench_fused_lm_head.py --part step --rounds 1 --steps 2
    python benchmarks/bench_fused_lm_head.py --part step --arch gemma3 --vocab 262144 --rounds 1 --steps 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _common import MemoryBaseline, fmt_mib, llama_sft_inputs, loadavg, machine_info, sft_args

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CELLS = (
    "1024x32000x256,1024x64000x256,1024x128000x256,1024x256000x256,"  # the V sweep (plot)
    "4096x32000x256,256x128000x256,1024x32000x1024"  # more rows, fewer rows, a wider hidden size
)
STEP_VARIANTS = ("trl_sft", "cot_joint_fused", "cot_joint_materialized")
STEP_LABELS = {
    "trl_sft": "TRL SFTTrainer (plain)",
    "cot_joint_fused": "COTSFTTrainer joint, fused head",
    "cot_joint_materialized": "COTSFTTrainer joint, logits",
}
TARGET_LOSS_MEMORY = 0.25
TARGET_LOSS_TIME = 1.5
TARGET_STEP_MEMORY = 1.15
TARGET_STEP_TIME = 1.3
# Materialized fwd+bwd holds about 5 logits-sized float32 buffers at its peak (the logits, log_softmax's output, the
# gradients of CE and of the complement entropy, their sum) plus the weight's gradient (measured: 4.8x + W at
# 1024 x 128000 x 256).
MATERIALIZED_LOGITS_COPIES = 5


# --------------------------------------------------------------------------------------------------------- workers
def loss_worker(spec: dict) -> dict:
    import torch
    import torch.nn.functional as F

    from hf_cot.linear_losses import linear_complement_terms
    from hf_cot.losses import complement_entropy

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    n, v, d = spec["n"], spec["v"], spec["d"]
    gen = torch.Generator().manual_seed(n * 7 + v + d)
    hidden = torch.randn(n, d, generator=gen).requires_grad_(True)
    weight = torch.randn(v, d, generator=gen).mul_(3.0 / d**0.5).requires_grad_(True)  # in place: no transient copy
    labels = torch.randint(0, v, (n,), generator=gen)
    chunk = spec.get("chunk_size")

    def objective(h, w, y):
        if spec["impl"] == "fused":
            terms = linear_complement_terms(h, w, y, chunk_size=chunk)
            return -terms["log_probs"].sum() - terms["complement_entropy"].sum()
        logits = h @ w.t()
        return F.cross_entropy(logits, y, reduction="sum") - complement_entropy(logits, y, reduction="sum")

    def fwd_bwd() -> float:
        hidden.grad = weight.grad = None
        loss = objective(hidden, weight, labels)
        loss.backward()
        return float(loss)

    # One-time runtime set-up (thread pool, lazily loaded kernels) on a tiny problem of the same path, so that the
    # baseline below is taken after it and the extra peak is the fwd+bwd's own.
    tiny = (torch.randn(8, d, requires_grad=True), torch.randn(16, d, requires_grad=True), torch.randint(0, 16, (8,)))
    objective(*tiny).backward()
    del tiny

    base = MemoryBaseline()
    times, value = [], None
    for i in range(1 + spec["repeats"]):
        start = time.perf_counter()
        value = fwd_bwd()
        elapsed = time.perf_counter() - start
        if i > 0:
            times.append(elapsed)
    return {
        **base.result(),
        "time_s": statistics.median(times),
        "times_s": times,
        "loss": value,
        "threads": torch.get_num_threads(),
    }


def step_worker(spec: dict) -> dict:
    import torch
    from transformers import TrainerCallback

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    m = spec["model"]
    max_steps = spec["warmup"] + spec["steps"]
    model, tokenizer, data = llama_sft_inputs(m, spec["seq_len"], spec["batch_size"] * max_steps)
    variant = spec["variant"]
    args, trainer_cls = sft_args(
        variant == "trl_sft",
        None if variant == "cot_joint_fused" else False,
        output_dir=spec["output_dir"],
        use_cpu=True,
        per_device_train_batch_size=spec["batch_size"],
        max_steps=max_steps,
        max_length=spec["seq_len"],
    )

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times = []

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter())

    timer = StepTimer()
    trainer = trainer_cls(model=model, args=args, train_dataset=data, processing_class=tokenizer, callbacks=[timer])
    base = MemoryBaseline()
    start = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - start
    mem = base.result()
    stamps = [start, *timer.times]
    step_times = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {
        **mem,
        "s_per_step": statistics.median(step_times[spec["warmup"] :]),
        "step_times_s": step_times,
        "train_s": train_s,
        "losses": losses,
        "first_loss": losses[0] if losses else None,
        "cot_fused": getattr(trainer, "_cot_fused", None),
        "rows_through_head": spec["batch_size"] * (spec["seq_len"] - 1),
        "parameters": sum(p.numel() for p in model.parameters()),
        "threads": torch.get_num_threads(),
    }


def run_worker(spec: dict) -> dict:
    """Run one measurement in a fresh interpreter; its last stdout line is the JSON result."""
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        sys.stderr.write(out.stderr[-4000:])
        raise RuntimeError(f"worker failed ({out.returncode}): {spec}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------------------ parts
def _fmt_s(s: float) -> str:
    return f"{s * 1e3:.0f} ms" if s < 1 else f"{s:.2f} s"


def _met(ok: bool) -> str:
    return "met" if ok else "**missed**"


def loss_part(opts) -> list[dict]:
    cells = [tuple(int(x) for x in c.lower().split("x")) for c in opts.cells.split(",") if c.strip()]
    impls = [("materialized", None), ("fused", None)]
    impls += [("fused", int(c)) for c in opts.chunk_sizes.split(",") if c.strip()]
    rows = []
    for i, (n, v, d) in enumerate(cells):
        logits_mib = n * v * 4 / 2**20
        estimate_gb = (MATERIALIZED_LOGITS_COPIES * n * v + 2 * v * d) * 4 / 1e9
        order = impls[i % len(impls) :] + impls[: i % len(impls)]
        row = {"n": n, "v": v, "d": d, "logits_mib": logits_mib, "results": {}}
        for impl, chunk in order:
            name = impl if chunk is None else f"fused chunk={chunk}"
            if impl == "materialized" and estimate_gb > opts.max_materialized_gb:
                row["results"][name] = {"skipped": f"estimated {estimate_gb:.1f} GB > {opts.max_materialized_gb} GB"}
                print(f"  {n}x{v}x{d} {name}: skipped ({row['results'][name]['skipped']})", flush=True)
                continue
            spec = dict(
                kind="loss", n=n, v=v, d=d, impl=impl, chunk_size=chunk, repeats=opts.repeats, threads=opts.threads
            )
            res = run_worker(spec)
            row["results"][name] = res
            print(
                f"  {n}x{v}x{d} {name}: {_fmt_s(res['time_s'])} (runs {', '.join(_fmt_s(t) for t in res['times_s'])}),"
                f" extra peak {fmt_mib(res['extra_peak_mib'])}, loss {res['loss']:.6g}",
                flush=True,
            )
        finish_loss_row(row)
        rows.append(row)
    return rows


def finish_loss_row(row: dict) -> dict:
    """Derived numbers of one cell: the weight gradient's size, memory without it, the fused/materialized ratios."""
    from hf_cot.ops.chunking import head_chunk_rows

    row["grad_weight_mib"] = row["v"] * row["d"] * 4 / 2**20  # float32 [V, d]: both paths produce it
    for name, res in row["results"].items():
        if "extra_peak_mib" not in res:
            continue
        res["extra_peak_excl_grad_weight_mib"] = res["extra_peak_mib"] - row["grad_weight_mib"]
        if name.startswith("fused"):
            chunk = int(name.split("=")[1]) if "=" in name else None
            res["chunk_rows"] = min(row["n"], head_chunk_rows(row["d"], row["v"], chunk))
    fused, mat = row["results"].get("fused"), row["results"].get("materialized")
    if fused and mat and "skipped" not in mat:
        row["memory_ratio"] = fused["extra_peak_mib"] / mat["extra_peak_mib"]
        row["memory_ratio_excl_grad_weight"] = (
            fused["extra_peak_excl_grad_weight_mib"] / mat["extra_peak_excl_grad_weight_mib"]
        )
        row["time_ratio"] = fused["time_s"] / mat["time_s"]
        row["loss_rel_diff"] = abs(fused["loss"] - mat["loss"]) / max(abs(mat["loss"]), 1e-12)
    return row


def loss_table(rows) -> str:
    lines = [
        "| N x V x d | logits | weight grad | extra peak: fused / materialized | memory ratio (<= 0.25) "
        "| ratio without the weight grad | fwd+bwd: fused / materialized | time ratio (<= 1.5x) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        f, m = row["results"].get("fused"), row["results"].get("materialized")
        cell = f"| {row['n']} x {row['v']} x {row['d']} | {fmt_mib(row['logits_mib'])} | {fmt_mib(row['grad_weight_mib'])} "
        if m is None or "skipped" in m:
            why = "not run" if m is None else m["skipped"]
            lines.append(
                cell + f"| {fmt_mib(f['extra_peak_mib'])} / skipped ({why}) | | | {_fmt_s(f['time_s'])} / skipped | |"
            )
            continue
        mr, tr = row["memory_ratio"], row["time_ratio"]
        lines.append(
            cell + f"| {fmt_mib(f['extra_peak_mib'])} / {fmt_mib(m['extra_peak_mib'])} "
            f"| {mr:.3f} ({_met(mr <= TARGET_LOSS_MEMORY)}) | {row['memory_ratio_excl_grad_weight']:.3f} "
            f"| {_fmt_s(f['time_s'])} / {_fmt_s(m['time_s'])} "
            f"| {tr:.2f}x ({_met(tr <= TARGET_LOSS_TIME)}) |"
        )
    extra = sorted(
        {k for row in rows for k in row["results"] if k.startswith("fused chunk=")}, key=lambda k: int(k.split("=")[1])
    )
    if extra:
        lines += [
            "",
            "| N x V x d | chunk rows | fwd+bwd | time vs materialized | extra peak | memory vs materialized |",
            "|---|---|---|---|---|---|",
        ]
        for row in rows:
            m = row["results"].get("materialized")
            m = None if m is None or "skipped" in m else m
            for k in ["fused", *extra]:
                r = row["results"].get(k)
                if r and "skipped" not in r:
                    label = f"default ({r['chunk_rows']})" if k == "fused" else k.split("=")[1]
                    t_ratio = f"{r['time_s'] / m['time_s']:.2f}x" if m else ""
                    m_ratio = f"{r['extra_peak_mib'] / m['extra_peak_mib']:.3f}" if m else ""
                    lines.append(
                        f"| {row['n']} x {row['v']} x {row['d']} | {label} | {_fmt_s(r['time_s'])} | {t_ratio} "
                        f"| {fmt_mib(r['extra_peak_mib'])} | {m_ratio} |"
                    )
    return "\n".join(lines)


def step_part(opts) -> dict:
    import tempfile

    variants = [v.strip() for v in opts.step_variants.split(",") if v.strip()]
    model = dict(
        arch=opts.arch,
        vocab=opts.vocab,
        hidden=opts.hidden,
        layers=opts.layers,
        heads=opts.heads,
        intermediate=opts.intermediate,
    )
    samples = {v: [] for v in variants}
    for r in range(opts.rounds):
        order = variants[r % len(variants) :] + variants[: r % len(variants)]
        for v in order:
            spec = dict(
                kind="step",
                variant=v,
                model=model,
                batch_size=opts.batch_size,
                seq_len=opts.seq_len,
                warmup=opts.warmup,
                steps=opts.steps,
                threads=opts.threads,
                output_dir=tempfile.mkdtemp(prefix="bench_fused_"),
            )
            res = run_worker(spec)
            samples[v].append(res)
            print(
                f"  round {r + 1}/{opts.rounds} {STEP_LABELS[v]}: {res['s_per_step']:.2f} s/step "
                f"(steps {', '.join(f'{t:.2f}' for t in res['step_times_s'])}), extra peak "
                f"{fmt_mib(res['extra_peak_mib'])}, first loss {res['first_loss']:.6f}, fused={res['cot_fused']}",
                flush=True,
            )
    summary = {}
    for v in variants:
        summary[v] = {
            "s_per_step": statistics.median(s["s_per_step"] for s in samples[v]),
            "extra_peak_mib": statistics.median(s["extra_peak_mib"] for s in samples[v]),
            "first_loss": samples[v][0]["first_loss"],
            "samples": samples[v],
        }
    if "trl_sft" in summary:
        base = summary["trl_sft"]
        for row in summary.values():
            row["time_ratio"] = row["s_per_step"] / base["s_per_step"]
            row["memory_ratio"] = row["extra_peak_mib"] / base["extra_peak_mib"]
    first = [s["first_loss"] for v in variants for s in samples[v]]
    spread = max(first) - min(first)
    agree = spread <= 1e-4 * max(abs(x) for x in first)
    return {"model": model, "variants": summary, "first_loss_spread": spread, "first_losses_agree": agree}


def step_table(step) -> str:
    lines = [
        "| variant | s/step | time vs TRL | extra peak memory | memory vs TRL | first-step loss |",
        "|---|---|---|---|---|---|",
    ]
    for v, row in step["variants"].items():
        tr, mr = row.get("time_ratio"), row.get("memory_ratio")
        t_note = m_note = ""
        if v == "cot_joint_fused" and tr is not None:
            t_note = f" ({_met(tr <= TARGET_STEP_TIME)}, <= {TARGET_STEP_TIME}x)"
            m_note = f" ({_met(mr <= TARGET_STEP_MEMORY)}, <= {TARGET_STEP_MEMORY}x)"
        lines.append(
            f"| {STEP_LABELS[v]} | {row['s_per_step']:.2f} | {'' if tr is None else f'{tr:.3f}x'}{t_note} "
            f"| {fmt_mib(row['extra_peak_mib'])} | {'' if mr is None else f'{mr:.3f}x'}{m_note} "
            f"| {row['first_loss']:.6f} |"
        )
    return "\n".join(lines)


def plot(path: str, rows, n: int, d: int) -> bool:
    sweep = [
        r
        for r in rows
        if r["n"] == n and r["d"] == d and "fused" in r["results"] and "skipped" not in r["results"]["fused"]
    ]
    if len(sweep) < 2:
        print(f"plot: fewer than two cells at N={n}, d={d}; no plot")
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep.sort(key=lambda r: r["v"])
    fig, (ax_m, ax_t) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, style, label in (
        ("materialized", "s--", "materialized: hidden @ W.T, F.cross_entropy + complement_entropy"),
        ("fused", "o-", "fused: linear_complement_terms"),
    ):
        pts = [
            (r["v"], r["results"][name]) for r in sweep if name in r["results"] and "skipped" not in r["results"][name]
        ]
        ax_m.plot([v for v, _ in pts], [x["extra_peak_mib"] for _, x in pts], style, label=label)
        ax_t.plot([v for v, _ in pts], [x["time_s"] for _, x in pts], style, label=label)
    vs = [r["v"] for r in sweep]
    ax_m.plot(vs, [r["logits_mib"] for r in sweep], "k-", lw=0.8, alpha=0.5, label="size of the logits")
    ax_m.plot(
        vs, [r["v"] * r["d"] * 4 / 2**20 for r in sweep], "k:", lw=0.8, alpha=0.6, label="size of the weight grad"
    )
    for ax, title, unit in ((ax_m, "extra peak RSS, fwd+bwd", "MiB"), (ax_t, "fwd+bwd time (median)", "s")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("vocabulary size V")
        ax.set_ylabel(unit)
        ax.set_title(f"{title}, N={n}, d={d}, fp32, CPU")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--part", choices=["loss", "step", "all"], default="all")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads in the workers")
    parser.add_argument("--json", default=None, help="write results and provenance here")
    parser.add_argument(
        "--json-section", default=None, help="store this run under this key of --json, keeping the file's other keys"
    )
    parser.add_argument("--from-json", default=None, help="measure nothing: print the tables (and --plot) of a JSON")
    parser.add_argument("--plot", default=None, help="PNG of extra memory and time vs V (loss part)")
    parser.add_argument("--plot-n", type=int, default=1024)
    parser.add_argument("--plot-d", type=int, default=256)
    loss = parser.add_argument_group("loss part")
    loss.add_argument("--cells", default=DEFAULT_CELLS, help="comma-separated NxVxd")
    loss.add_argument("--repeats", type=int, default=2, help="timed fwd+bwd runs after one warm-up")
    loss.add_argument("--chunk-sizes", default="", help="extra fused variants with chunk_size=... (comma-separated)")
    loss.add_argument("--max-materialized-gb", type=float, default=12.0)
    step = parser.add_argument_group("step part")
    step.add_argument("--step-variants", default=",".join(STEP_VARIANTS))
    step.add_argument("--rounds", type=int, default=2, help="fresh subprocesses per variant")
    step.add_argument("--warmup", type=int, default=1)
    step.add_argument("--steps", type=int, default=3, help="timed steps per subprocess")
    step.add_argument("--batch-size", type=int, default=4)
    step.add_argument("--seq-len", type=int, default=256)
    step.add_argument("--vocab", type=int, default=128256)
    step.add_argument(
        "--arch",
        choices=["llama", "gemma3"],
        default="llama",
        help="gemma3: Gemma3ForConditionalGeneration (what AutoModelForCausalLM gives for Gemma 3; use --vocab 262144)",
    )
    step.add_argument("--hidden", type=int, default=256)
    step.add_argument("--layers", type=int, default=2)
    step.add_argument("--heads", type=int, default=4)
    step.add_argument("--intermediate", type=int, default=688)
    opts = parser.parse_args(argv)

    if opts.worker:
        spec = json.loads(opts.worker)
        result = loss_worker(spec) if spec["kind"] == "loss" else step_worker(spec)
        print(json.dumps(result))
        return 0

    if opts.from_json:
        return report(json.load(open(opts.from_json)), opts)

    import torch

    sys.path.insert(0, HERE)
    from _provenance import provenance

    info = machine_info(("torch", "transformers", "trl"), extra={"torch_threads_default": torch.get_num_threads()})
    info["loadavg_at_start"] = loadavg()
    print("machine:", json.dumps(info), flush=True)
    options = {k: v for k, v in vars(opts).items() if k not in ("worker", "from_json")}
    results = {**provenance(), "machine": info, "options": options}
    started = time.perf_counter()
    if opts.part in ("loss", "all"):
        print("\nloss part (fresh subprocess per variant and cell):", flush=True)
        results["loss"] = loss_part(opts)
    if opts.part in ("step", "all"):
        print("\nstep part (fresh subprocess per variant and round):", flush=True)
        results["step"] = step_part(opts)
    info["loadavg_at_end"] = loadavg()
    results["wall_s"] = time.perf_counter() - started
    status = report(results, opts)
    print(f"total {results['wall_s'] / 60:.1f} min; load average at start {info['loadavg_at_start']}, "
          f"end {info['loadavg_at_end']}")  # fmt: skip
    if opts.json:
        out = results
        if opts.json_section:  # keep what the file holds, this run goes under its own key
            out = json.load(open(opts.json)) if os.path.exists(opts.json) else {}
            out[opts.json_section] = results
        with open(opts.json, "w") as f:
            json.dump(out, f, indent=2)
    return status


def report(results: dict, opts) -> int:
    """Print the tables (and save the plot) of a run's results; 1 when the first-step losses disagree."""
    status = 0
    if results.get("loss"):
        rows = [finish_loss_row(row) for row in results["loss"]]
        print("\n" + loss_table(rows), flush=True)
        if opts.plot and plot(opts.plot, rows, opts.plot_n, opts.plot_d):
            print(f"plot saved to {opts.plot}")
    if results.get("step"):
        step = results["step"]
        print("\n" + step_table(step))
        verdict = "yes" if step["first_losses_agree"] else "NO"
        print(f"first-step losses agree (spread {step['first_loss_spread']:.2e}): {verdict}", flush=True)
        status = 0 if step["first_losses_agree"] else 1
    if results.get("chunk_sweep", {}).get("loss"):  # a --json-section chunk_sweep run stored in the same file
        print("\nchunk_sweep:\n" + loss_table([finish_loss_row(row) for row in results["chunk_sweep"]["loss"]]))
    print()
    return status


if __name__ == "__main__":
    sys.exit(main())
