"""Forward + backward time and peak extra memory of `hf_cot.losses.complement_objective` against the official COT
formula and against `torch.nn.functional.cross_entropy`, on the same logits.

Implementations (each called as ``loss = fn(logits, labels); loss.backward()`` on a leaf ``[N, V]`` tensor):

* ``ours``: `hf_cot.losses.complement_objective` (chunked custom autograd Function, float32 math, no epsilon).
* ``official``: a faithful re-implementation of ``ComplementEntropy.forward`` in henry8527/COT ``code/COT.py``:
  ``softmax``, ``gather``, ``/ ((1 - p_g) + 1e-7)``, ``log(. + 1e-10)``, a zero-hot mask of ones, ``sum / N / K``.
  As in the original it runs in the dtype of the logits (no upcast) and the mask is a dense ``[N, V]`` tensor.
* ``cross_entropy``: ``F.cross_entropy(logits, labels)``, the primary loss every step pays anyway.

Labels are uniform in ``[0, V)`` and none is ignored (the official formula has no ignore_index). Logits are
``randn * --logit-scale`` (default 3: peaked like a trained LM head but not saturated).

Timing: all implementations of a case run in the same process, *interleaved* (round-robin, rotating the order
every repeat so that no implementation always runs right after another), after one untimed warm-up each; the table
shows the median of ``--repeats`` wall times. On CUDA every timing is bracketed by ``torch.cuda.synchronize()``.

Peak extra memory is what fwd+bwd allocates *beyond the logits themselves*, at its highest point, and it includes
the returned gradient (``logits.grad``, one logits-sized buffer every implementation must produce):

* CUDA: ``torch.cuda.max_memory_allocated() - memory_allocated()`` after ``reset_peak_memory_stats()``.
* CPU: PyTorch's own allocator records, not RSS. One extra (untimed) run per implementation under
  ``torch.profiler.profile(profile_memory=True)``; every tensor allocation and free is a ``[memory]`` event with
  its byte count; the running sum of those events in time order is the bytes live above the starting point, and
  its maximum is the peak. This is exact for tensor storage (what the three implementations differ in), immune to
  glibc caching and page-granularity effects that make an RSS delta noisy, and counts a buffer whether or not its
  pages were touched. It does not see Python objects or allocator overhead (the same for all three).

Targets (issue): ``ours`` >= 3x faster and >= 3x less extra memory than ``official``; <= 1.5x the time of
``cross_entropy``.

    python benchmarks/bench_loss.py                                  # the three default cases, fp32 and bf16, CPU
    python benchmarks/bench_loss.py --cases 4096x32000 --dtypes fp32 --repeats 5 --json out.json
    python benchmarks/bench_loss.py --device cuda --repeats 20
    python benchmarks/bench_loss.py --plot benchmarks/loss_vs_vocab.png --plot-n 1024   # V sweep (fp32)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import torch.nn.functional as F

from _provenance import provenance
from hf_cot.losses import complement_objective

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DEFAULT_CASES = "4096x32000,1024x128000,8192x5"
PLOT_VOCABS = (1000, 8000, 32000, 64000, 128000)
IMPLS = ("ours", "official", "cross_entropy")
TARGET_SPEEDUP_VS_OFFICIAL = 3.0
TARGET_MEMORY_SAVING_VS_OFFICIAL = 3.0
TARGET_TIME_VS_CE = 1.5


def official_cot(y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """henry8527/COT code/COT.py ``ComplementEntropy.forward`` with ``classes = K`` and the mask on y's device."""
    batch_size, classes = len(y), y_hat.shape[1]
    y_hat = F.softmax(y_hat, dim=1)
    yg = torch.gather(y_hat, 1, torch.unsqueeze(y, 1))
    yg_ = (1 - yg) + 1e-7  # avoiding numerical issues (first)
    px = y_hat / yg_.view(len(y_hat), 1)
    px_log = torch.log(px + 1e-10)  # avoiding numerical issues (second)
    y_zerohot = torch.ones(batch_size, classes, device=y.device).scatter_(1, y.view(batch_size, 1), 0)
    output = px * px_log * y_zerohot
    loss = torch.sum(output)
    loss /= float(batch_size)
    loss /= float(classes)
    return loss


def ours(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return complement_objective(logits, labels)


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, labels)


FNS = {"ours": ours, "official": official_cot, "cross_entropy": cross_entropy}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _fwd_bwd(fn, leaf: torch.Tensor, labels: torch.Tensor) -> None:
    leaf.grad = None
    loss = fn(leaf, labels)
    loss.backward()
    del loss


def _time_once(fn, leaf, labels, device) -> float:
    _sync(device)
    start = time.perf_counter()
    _fwd_bwd(fn, leaf, labels)
    _sync(device)
    elapsed = time.perf_counter() - start
    leaf.grad = None
    return elapsed


def _peak_extra_bytes(fn, leaf, labels, device) -> int:
    leaf.grad = None
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        _fwd_bwd(fn, leaf, labels)
        _sync(device)
        peak = torch.cuda.max_memory_allocated(device) - base
        leaf.grad = None
        return int(peak)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        _fwd_bwd(fn, leaf, labels)
    events = sorted(
        (e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"
    )
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    leaf.grad = None
    return int(peak)


def measure_case(n: int, v: int, dtype: torch.dtype, device: torch.device, repeats: int, scale: float, impls=IMPLS):
    gen = torch.Generator(device="cpu").manual_seed(n * 7 + v)
    logits = (torch.randn(n, v, generator=gen) * scale).to(device=device, dtype=dtype)
    labels = torch.randint(0, v, (n,), generator=gen).to(device)
    leaf = logits.requires_grad_(True)
    times = {name: [] for name in impls}
    for name in impls:  # warm-up (lazy init, allocator, thread pool)
        _time_once(FNS[name], leaf, labels, device)
    for r in range(repeats):
        order = list(impls[r % len(impls) :]) + list(impls[: r % len(impls)])
        for name in order:
            times[name].append(_time_once(FNS[name], leaf, labels, device))
    memory = {name: _peak_extra_bytes(FNS[name], leaf, labels, device) for name in impls}
    logits_bytes = logits.numel() * logits.element_size()
    del leaf, logits
    if device.type == "cuda":
        torch.cuda.empty_cache()
    row = {
        "n": n,
        "v": v,
        "dtype": str(dtype).replace("torch.", ""),
        "logits_mib": logits_bytes / 2**20,
        "time_s": {name: statistics.median(ts) for name, ts in times.items()},
        "time_min_s": {name: min(ts) for name, ts in times.items()},
        "times_s": times,
        "peak_extra_mib": {name: b / 2**20 for name, b in memory.items()},
    }
    t, m = row["time_s"], row["peak_extra_mib"]
    if "official" in t:
        row["speedup_vs_official"] = t["official"] / t["ours"]
        row["memory_saving_vs_official"] = m["official"] / max(m["ours"], 1e-9)
    if "cross_entropy" in t:
        row["time_vs_cross_entropy"] = t["ours"] / t["cross_entropy"]
    return row


def _fmt_time(s: float) -> str:
    return f"{s * 1e3:.1f} ms" if s < 1 else f"{s:.2f} s"


def _fmt_mib(m: float) -> str:
    return f"{m * 1024:.0f} KiB" if m < 1 else f"{m:.0f} MiB"


def _mark(ok: bool) -> str:
    return "" if ok else " (miss)"


def format_table(rows) -> str:
    head = (
        "| N x V | dtype | ours | official | cross_entropy | speedup vs official (>= 3x) | time vs CE (<= 1.5x) "
        "| peak extra mem: ours / official / CE | memory saving vs official (>= 3x) |"
    )
    lines = [head, "|" + "---|" * 9]
    for row in rows:
        t, m = row["time_s"], row["peak_extra_mib"]
        speed, vs_ce = row["speedup_vs_official"], row["time_vs_cross_entropy"]
        saving = row["memory_saving_vs_official"]
        lines.append(
            f"| {row['n']} x {row['v']} | {row['dtype']} | {_fmt_time(t['ours'])} | {_fmt_time(t['official'])} "
            f"| {_fmt_time(t['cross_entropy'])} | {speed:.2f}x{_mark(speed >= TARGET_SPEEDUP_VS_OFFICIAL)} "
            f"| {vs_ce:.2f}x{_mark(vs_ce <= TARGET_TIME_VS_CE)} "
            f"| {_fmt_mib(m['ours'])} / {_fmt_mib(m['official'])} / {_fmt_mib(m['cross_entropy'])} "
            f"| {saving:.1f}x{_mark(saving >= TARGET_MEMORY_SAVING_VS_OFFICIAL)} |"
        )
    return "\n".join(lines)


def machine_info(device: torch.device) -> dict:
    info = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
        info["loadavg_at_start"] = open("/proc/loadavg").read().split()[:3]
    except (OSError, StopIteration):
        info["cpu"] = platform.processor()
    return info


def plot_sweep(path: str, n: int, device: torch.device, repeats: int, scale: float, dtype: torch.dtype):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []
    for v in PLOT_VOCABS:
        row = measure_case(n, v, dtype, device, repeats, scale)
        rows.append(row)
        print(
            f"  sweep N={n} V={v}: " + ", ".join(f"{k} {_fmt_time(s)}" for k, s in row["time_s"].items()), flush=True
        )
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {"ours": "o-", "official": "s--", "cross_entropy": "^:"}
    labels = {
        "ours": "hf_cot complement_objective",
        "official": "official COT formula",
        "cross_entropy": "F.cross_entropy",
    }
    vs = [r["v"] for r in rows]
    for name in IMPLS:
        ax_t.plot(vs, [r["time_s"][name] * 1e3 for r in rows], styles[name], label=labels[name])
        ax_m.plot(vs, [r["peak_extra_mib"][name] for r in rows], styles[name], label=labels[name])
    ax_m.plot(vs, [r["logits_mib"] for r in rows], "k-", lw=0.8, alpha=0.5, label="logits size")
    for ax, title, unit in ((ax_t, "forward + backward time", "ms"), (ax_m, "peak extra memory", "MiB")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("vocabulary size V")
        ax.set_ylabel(unit)
        ax.set_title(f"{title}, N={n}, {str(dtype).replace('torch.', '')}, {device.type}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed runs per implementation (default: 3 on CPU, 20 on CUDA)"
    )
    parser.add_argument(
        "--cases", default=DEFAULT_CASES, help=f"comma-separated NxV (default {DEFAULT_CASES}); empty for none"
    )
    parser.add_argument("--dtypes", default="fp32,bf16", help="comma-separated among fp32,bf16,fp16")
    parser.add_argument("--logit-scale", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU); default: torch's")
    parser.add_argument("--json", dest="json_out", default=None, help="write rows and machine info here")
    parser.add_argument("--plot", default=None, help=f"also sweep V in {PLOT_VOCABS} at --plot-n, save a PNG here")
    parser.add_argument("--plot-n", type=int, default=1024)
    parser.add_argument("--plot-dtype", default="fp32", choices=sorted(DTYPES))
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = args.repeats or (20 if device.type == "cuda" else 3)
    info = machine_info(device)
    print("machine:", json.dumps(info), flush=True)

    rows = []
    cases = [c for c in args.cases.split(",") if c.strip()]
    for case in cases:
        n, v = (int(x) for x in case.lower().split("x"))
        for dtype_name in args.dtypes.split(","):
            row = measure_case(n, v, DTYPES[dtype_name.strip()], device, repeats, args.logit_scale)
            rows.append(row)
            print(
                f"  {n}x{v} {dtype_name}: "
                + ", ".join(
                    f"{k} {_fmt_time(s)} / {_fmt_mib(row['peak_extra_mib'][k])}" for k, s in row["time_s"].items()
                ),
                flush=True,
            )
    if rows:
        print()
        print(
            f"median of {repeats} interleaved runs; {info['device']}, torch {info['torch']}, {info['threads']} threads"
        )
        print(format_table(rows))

    sweep = None
    if args.plot:
        sweep = plot_sweep(args.plot, args.plot_n, device, repeats, args.logit_scale, DTYPES[args.plot_dtype])
        print(f"\nV sweep at N={args.plot_n} ({args.plot_dtype}) saved to {args.plot}")
        print(format_table(sweep))

    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({**provenance(), "machine": info, "repeats": repeats, "rows": rows, "sweep": sweep}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
