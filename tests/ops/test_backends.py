"""What the engines that cannot be run on this machine get: refusals at construction, checked with a simulated flag.

The real engines - DDP, FSDP2, DeepSpeed ZeRO-2/3 - train in 2 gloo processes in test_distributed.py and
test_engines.py. What remains is FSDP1 (accelerate cannot build its plugin without a GPU-like device) and the
construction-time refusals: the Trainer derives ``is_deepspeed_enabled`` / ``is_fsdp_enabled`` from the accelerator
state at the end of ``create_accelerator_and_postprocess()`` (called from ``Trainer.__init__`` before the rest of the
parent's setup), and COT decides from those attributes (and, for FSDP, the plugin's ``fsdp_version``). The subclass
below sets the attribute right there, after the accelerator exists; with no FSDP plugin the version reads as 1, so
the simulated FSDP is FSDP1. Nothing trains here.
"""

from __future__ import annotations

import pytest

from hf_cot import COTSeq2SeqTrainer, COTSeq2SeqTrainingArguments, COTTrainer, COTTrainingArguments
from hf_cot.trainer import _ComplementStepCallback
from testing_utils import causal_lm_data, classification_data, seq2seq_data, tiny_bert, tiny_llama, tiny_marian

BACKENDS = {"DeepSpeed": "is_deepspeed_enabled", "FSDP1": "is_fsdp_enabled"}


def _with_backend(trainer_cls, flag):
    class Simulated(trainer_cls):
        def create_accelerator_and_postprocess(self):
            super().create_accelerator_and_postprocess()
            assert getattr(self, flag) is False  # really set by the parent from the (plain) accelerator state
            setattr(self, flag, True)

    return Simulated


def _build(kind, backend, mode, out_dir, **kw):
    if kind == "causal":
        cls, args_cls, model, data = COTTrainer, COTTrainingArguments, tiny_llama(), causal_lm_data(n=8)
    elif kind == "seq2seq":
        cls, args_cls, model, data = COTSeq2SeqTrainer, COTSeq2SeqTrainingArguments, tiny_marian(), seq2seq_data(n=8)
    else:
        cls, args_cls, model, data = COTTrainer, COTTrainingArguments, tiny_bert(), classification_data(n=8)
    if backend is not None:
        cls = _with_backend(cls, BACKENDS[backend])
    args = args_cls(output_dir=out_dir, use_cpu=True, cot_mode=mode, report_to="none", **kw)
    return cls(model=model, args=args, train_dataset=data)


@pytest.mark.parametrize("kind", ["classifier", "seq2seq"])
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_alternating_refused(out_dir, backend, kind):
    with pytest.raises(NotImplementedError) as err:
        _build(kind, backend, "alternating", out_dir)
    message = str(err.value)
    assert backend in message and "alternating" in message
    assert "cot_mode='joint'" in message and "cot_mode='guided'" in message


@pytest.mark.parametrize("mode", ["joint", "guided", "off"])
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_single_loss_modes_construct(out_dir, backend, mode):
    trainer = _build("classifier", backend, mode, out_dir)
    assert getattr(trainer, BACKENDS[backend]) is True and trainer.cot_mode == mode
    # No second optimizer and no complement callback anywhere in these modes.
    assert not any(isinstance(cb, _ComplementStepCallback) for cb in trainer.callback_handler.callbacks)
    assert trainer.complement_optimizer is None


def test_alternating_constructs_without_backend(out_dir):
    """Control: the same construction without the simulated flag is accepted (the flag is what is refused)."""
    trainer = _build("classifier", None, "alternating", out_dir)
    assert sum(isinstance(cb, _ComplementStepCallback) for cb in trainer.callback_handler.callbacks) == 1


def test_fsdp1_keeps_the_logits_or_refuses_the_fused_head(out_dir):
    """FSDP1 flattens the head's weight into its FlatParameter: unset falls back to the logits, True is refused."""
    assert _build("causal", None, "joint", out_dir)._cot_fused  # control: the same model fuses without the flag
    assert not _build("causal", "FSDP1", "joint", out_dir)._cot_fused
    with pytest.raises(ValueError, match="cot_fused_lm_head=True cannot be used: FSDP1 .*FSDP2"):
        _build("causal", "FSDP1", "joint", out_dir, cot_fused_lm_head=True)
    # DeepSpeed is no reason to fall back: the fused head runs under every ZeRO stage (test_engines.py)
    assert _build("causal", "DeepSpeed", "joint", out_dir)._cot_fused
