"""What the benchmarks that train a small model in a subprocess share: memory probes, the machine's description, the
random-init Llama, its data and tokenizer, and the TRL / COT SFT arguments.

Light to import: torch, transformers, TRL and hf_cot are imported by the functions that use them, so that a rank can
patch accelerate before any of them is loaded.
"""

from __future__ import annotations

import gc
import importlib
import os
import platform
import resource

MIB = 2**20


# --------------------------------------------------------------------------------------------------- memory probes
def rss_now() -> int:
    """Current resident set size in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def rss_peak() -> int:
    """Peak resident set size of this process in bytes (Linux reports ``ru_maxrss`` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class MemoryBaseline:
    """The memory baseline of a measurement: after a ``gc.collect()``, the current RSS (``current``) and the peak
    reached so far (``peak``), both in bytes."""

    def __init__(self):
        gc.collect()
        self.current, self.peak = rss_now(), rss_peak()

    def result(self) -> dict:
        """The peak now minus the baseline's current RSS, in MiB; ``peak_before_baseline``: the peak had already been
        reached before the baseline, so the extra peak is a lower bound."""
        end_peak = rss_peak()
        return {
            "extra_peak_mib": (end_peak - self.current) / MIB,
            "baseline_rss_mib": self.current / MIB,
            "end_peak_rss_mib": end_peak / MIB,
            "peak_before_baseline": end_peak <= self.peak,
        }


def fmt_mib(m: float) -> str:
    """``m`` MiB as ``"123 MiB"``, or ``"1.23 GiB"`` from 1 GiB on."""
    return f"{m / 1024:.2f} GiB" if m >= 1024 else f"{m:.0f} MiB"


# ------------------------------------------------------------------------------------------------------ the machine
def machine_info(packages: tuple[str, ...], extra: dict | None = None, memory: bool = False) -> dict:
    """Platform, Python, CPU count, the ``__version__`` of each of ``packages``, then ``extra``, the CPU model and,
    with ``memory``, the total RAM in GiB (``mem_total_gib``)."""
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count()}
    info.update({name: importlib.import_module(name).__version__ for name in packages})
    info.update(extra or {})
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        info["cpu"] = platform.processor()
    if memory:
        try:
            with open("/proc/meminfo") as f:
                info["mem_total_gib"] = int(f.readline().split()[1]) / 2**20
        except (OSError, IndexError, ValueError):
            pass
    return info


def loadavg() -> list[str]:
    """The 1, 5 and 15 minute load averages as written in ``/proc/loadavg`` (empty where there is none)."""
    try:
        with open("/proc/loadavg") as f:
            return f.read().split()[:3]
    except OSError:
        return []


# ------------------------------------------------------------------------------------------- model, data, trainer
def llama_sft_inputs(m: dict, seq_len: int, rows: int) -> tuple:
    """``(model, tokenizer, dataset)`` of one SFT run: a random-init ``LlamaForCausalLM`` (``torch.manual_seed(0)``,
    so the same weights in every process) of shape ``m`` (vocab, hidden, intermediate, layers, heads) with an untied
    head, pad id 0 and bos = eos id 1; a 4-word tokenizer whose only use is its pad (0) and eos (1) ids, since the
    data is pre-tokenized (TRL skips tokenization when ``input_ids`` is present); and ``rows`` sequences of
    ``seq_len`` token ids uniform in ``[2, vocab)`` (seed 1) as a ``datasets.Dataset`` with one column, ``input_ids``."""
    import torch
    from datasets import Dataset
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    if m.get("arch", "llama") == "gemma3":
        model = _gemma3(m, seq_len)
    else:
        model = LlamaForCausalLM(_llama_config(LlamaConfig, m, seq_len))
    words = ["<pad>", "<eos>", "w2", "w3"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(2, m["vocab"], (rows, seq_len), generator=g)
    return model, tokenizer, Dataset.from_dict({"input_ids": ids.tolist()})


def _llama_config(config_class, m: dict, seq_len: int):
    return config_class(
        vocab_size=m["vocab"],
        hidden_size=m["hidden"],
        intermediate_size=m["intermediate"],
        num_hidden_layers=m["layers"],
        num_attention_heads=m["heads"],
        num_key_value_heads=m["heads"],
        max_position_embeddings=seq_len,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=1,
        tie_word_embeddings=False,
    )


def _gemma3(m: dict, seq_len: int):
    """Gemma 3 as `AutoModelForCausalLM` hands it out (`Gemma3ForConditionalGeneration`): its text config in ``m``'s
    shape, logit soft-capping 30 and tied embeddings as the released checkpoints have, a one-layer vision tower."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3TextConfig, SiglipVisionConfig

    text = _llama_config(Gemma3TextConfig, m, seq_len)
    text.head_dim = m["hidden"] // m["heads"]
    text.final_logit_softcapping = 30.0
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                image_size=32, patch_size=16)  # fmt: skip
    config = Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4, tie_word_embeddings=True)
    return Gemma3ForConditionalGeneration(config)


def sft_args(trl_plain: bool, cot_fused_lm_head: bool | None, **settings) -> tuple:
    """``(args, trainer class)``: TRL's ``SFTConfig`` / ``SFTTrainer`` when ``trl_plain`` (TRL's own loss defaults),
    else ``COTSFTConfig(cot_mode="joint", cot_fused_lm_head=...)`` / ``COTSFTTrainer``. The settings every benchmark
    shares (no reporting, saving, progress bar, bf16, gradient checkpointing or worker processes; seed 0; a log every
    step) are set here, the rest (``output_dir``, batch size, steps, ``max_length``, ...) come in ``settings``."""
    import trl

    from hf_cot.trl import COTSFTConfig, COTSFTTrainer

    common = dict(
        report_to=[],
        bf16=False,
        disable_tqdm=True,
        save_strategy="no",
        seed=0,
        data_seed=0,
        logging_steps=1,
        gradient_checkpointing=False,
        dataset_num_proc=None,
        dataloader_num_workers=0,
        **settings,
    )
    if trl_plain:
        return trl.SFTConfig(**common), trl.SFTTrainer
    return COTSFTConfig(**common, cot_mode="joint", cot_fused_lm_head=cot_fused_lm_head), COTSFTTrainer
