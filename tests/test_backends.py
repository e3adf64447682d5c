"""cot_mode='alternating' is refused under FSDP and DeepSpeed; the single-loss modes construct there.

How the backend is simulated: the Trainer derives ``is_deepspeed_enabled`` / ``is_fsdp_enabled`` from the accelerator
state at the end of ``create_accelerator_and_postprocess()`` (called from ``Trainer.__init__`` before the rest of the
parent's setup), and COT decides from those two attributes. The subclass below sets the attribute right there, after
the accelerator exists, so the parent's remaining ``__init__`` and COT's check see exactly what a real launch would
give them. Nothing is installed (no deepspeed) and nothing trains: a real FSDP/ZeRO engine needs a distributed GPU
launch (on this CPU-only machine ``fsdp=...`` under a 1-process torchrun does not even build its plugin), and the
refusal is a construction-time guarantee.
"""

from __future__ import annotations

import pytest

from hf_cot import COTSeq2SeqTrainer, COTSeq2SeqTrainingArguments, COTTrainer, COTTrainingArguments
from hf_cot.trainer import _ComplementStepCallback
from testing_utils import classification_data, seq2seq_data, tiny_bert, tiny_marian

BACKENDS = {"DeepSpeed": "is_deepspeed_enabled", "FSDP": "is_fsdp_enabled"}


def _with_backend(trainer_cls, flag):
    class Simulated(trainer_cls):
        def create_accelerator_and_postprocess(self):
            super().create_accelerator_and_postprocess()
            assert getattr(self, flag) is False  # really set by the parent from the (plain) accelerator state
            setattr(self, flag, True)

    return Simulated


def _build(kind, backend, mode, out_dir):
    if kind == "seq2seq":
        cls, args_cls, model, data = COTSeq2SeqTrainer, COTSeq2SeqTrainingArguments, tiny_marian(), seq2seq_data(n=8)
    else:
        cls, args_cls, model, data = COTTrainer, COTTrainingArguments, tiny_bert(), classification_data(n=8)
    if backend is not None:
        cls = _with_backend(cls, BACKENDS[backend])
    args = args_cls(output_dir=out_dir, use_cpu=True, cot_mode=mode, report_to="none")
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
