"""What a COT trainer is given, it keeps; what a plain run draws, it draws.

Arguments: a `TrainingArguments` without the COT fields (transformers' two classes, TRL's `SFTConfig`, a user's
subclass with fields of its own) keeps its class, fields and values, tokens included (`to_dict` masks every
``*_token``), in a COT subclass of its class; the caller's object is left as it is; the result pickles (the Trainer's
training_args.bin) and deep-copies (`hf_cot.argument_conversion.as_cot_arguments`).

Random streams: the alternating mode's complement step draws from torch, numpy and Python streams of its own, saved
with the checkpoint, so that the run's CE steps see the masks a plain run sees (Wav2Vec2's SpecAugment draws from
numpy's global stream) and the run's streams end where a plain run's end (`hf_cot.random_streams`).
"""

import copy
import dataclasses
import io
import logging
import os
import pickle
import random
import shutil
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from transformers import Seq2SeqTrainingArguments, Trainer, TrainingArguments, Wav2Vec2ForSequenceClassification

from head_zoo import _wav2vec2_config
from hf_cot import (
    COTArgumentsMixin,
    COTSeq2SeqTrainer,
    COTSeq2SeqTrainingArguments,
    COTTrainer,
    COTTrainingArguments,
)
from hf_cot.argument_conversion import as_cot_arguments, cot_arguments_class
from hf_cot.random_streams import capture_streams, restore_streams, seed_streams, untouched_random_streams
from testing_utils import classification_data, max_param_diff, prompt_completion, tiny_bert, tiny_llama, word_tokenizer

COT_DEFAULTS = {f.name: f.default for f in dataclasses.fields(COTArgumentsMixin)}


@dataclass
class MyArgs(TrainingArguments):
    """A user's subclass (module level: pickled by reference, as a user's importable class is)."""

    my_field: int = 7
    my_token: str | None = None  # a token of its own: to_dict masks it as it masks hub_token


@dataclass
class MyCOTArgs(COTArgumentsMixin, MyArgs):
    """The user's subclass with the COT fields, mixed in by the user."""


def _kw(out_dir, **kw):
    base = dict(
        output_dir=out_dir, report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True, seed=3, data_seed=3,
        per_device_train_batch_size=4, max_steps=2, logging_steps=1, learning_rate=1e-3,
    )  # fmt: skip
    base.update(kw)
    return base


def _values(args, names=None) -> dict:
    names = names if names is not None else [f.name for f in dataclasses.fields(args)]
    return {name: getattr(args, name) for name in names}


def _assert_kept(converted, given, before: dict) -> None:
    """Every field of ``given`` has its value in ``converted``, the COT fields their defaults, and ``given`` is as it
    was (``before``: a deep copy of its values taken before the conversion)."""
    names = [f.name for f in dataclasses.fields(given)]
    assert _values(converted, names) == _values(given, names)
    assert _values(given, names) == before
    assert _values(converted, list(COT_DEFAULTS)) == COT_DEFAULTS
    assert converted is not given


def _losses(trainer) -> list[float]:
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


# ------------------------------------------------------------------------------------------------ arguments


@pytest.mark.parametrize(
    "cls, named, extra",
    [
        (TrainingArguments, COTTrainingArguments, {}),
        (Seq2SeqTrainingArguments, COTSeq2SeqTrainingArguments, {"predict_with_generate": True,
                                                                  "generation_max_length": 11}),
    ],
)  # fmt: skip
def test_transformers_arguments_keep_every_value_in_their_cot_class(out_dir, cls, named, extra):
    """Seq2SeqTrainingArguments given to COTTrainer used to become COTTrainingArguments, its fields dropped."""
    given = cls(**_kw(out_dir, hub_token="hf_secret", learning_rate=0.0123, lr_scheduler_type="cosine",
                      gradient_accumulation_steps=2, **extra))  # fmt: skip
    before = copy.deepcopy(_values(given))
    trainer = COTTrainer(model=tiny_bert(), args=given)
    assert type(trainer.args) is named and cot_arguments_class(cls) is named
    _assert_kept(trainer.args, given, before)
    assert trainer.args.hub_token == "hf_secret"


def test_a_user_subclass_keeps_its_class_and_fields(out_dir, caplog):
    given = MyArgs(**_kw(out_dir, my_field=9, my_token="mine", hub_token="hf_secret", save_strategy="steps",
                         save_steps=2))  # fmt: skip
    before = copy.deepcopy(_values(given))
    with caplog.at_level(logging.WARNING, logger="hf_cot.config"):
        trainer = COTTrainer(model=tiny_bert(), args=given, train_dataset=classification_data(n=8))
    args = trainer.args
    assert isinstance(args, MyArgs) and isinstance(args, COTArgumentsMixin) and type(args).__name__ == "COTMyArgs"
    assert args.my_field == 9 and args.my_token == "mine" and args.cot_mode == "joint"
    _assert_kept(args, given, before)
    assert "MyArgs converted to COTMyArgs" in caplog.text and "cot_mode='joint'" in caplog.text
    # one class per user class, whatever builds it
    assert type(as_cot_arguments(given, COTTrainingArguments)) is type(args) is cot_arguments_class(MyArgs)

    names = [f.name for f in dataclasses.fields(args)]
    buffer = io.BytesIO()
    torch.save(args, buffer)
    buffer.seek(0)
    for copied in (pickle.loads(pickle.dumps(args)), copy.deepcopy(args), torch.load(buffer, weights_only=False)):
        assert type(copied) is type(args) and _values(copied, names) == _values(args, names)

    trainer.train()  # writes training_args.bin with the checkpoint
    saved = torch.load(os.path.join(out_dir, "checkpoint-2", "training_args.bin"), weights_only=False)
    assert type(saved) is type(args) and saved.my_field == 9 and saved.my_token == "mine"


def test_the_converted_arguments_are_checked_as_cot_arguments_are(out_dir):
    for cls in (TrainingArguments, MyArgs):
        with pytest.raises(ValueError, match="use_liger_kernel cannot be combined with cot_mode='joint'"):
            COTTrainer(model=tiny_bert(), args=cls(**_kw(out_dir, use_liger_kernel=True)))
    derived = cot_arguments_class(MyArgs)
    with pytest.raises(ValueError, match="--cot_mode"):
        derived(**_kw(out_dir, cot_mode="complement"))  # built directly, the class checks its COT fields itself
    assert derived(**_kw(out_dir, cot_mode="off", my_field=3)).my_field == 3


def test_a_trainer_needing_another_base_rebuilds_the_arguments_naming_what_it_drops(out_dir):
    """COTSeq2SeqTrainer needs Seq2SeqTrainingArguments: a TrainingArguments (or a user's subclass) is rebuilt as
    COTSeq2SeqTrainingArguments, as TRL rebuilds one as an SFTConfig; tokens kept, the user's own fields named."""
    given = TrainingArguments(**_kw(out_dir, hub_token="hf_secret", learning_rate=0.0123))
    trainer = COTSeq2SeqTrainer(model=tiny_bert(), args=given)
    assert type(trainer.args) is COTSeq2SeqTrainingArguments
    assert trainer.args.hub_token == "hf_secret" and trainer.args.learning_rate == 0.0123
    with pytest.warns(UserWarning, match="which has no my_field, my_token: those values are dropped"):
        trainer = COTSeq2SeqTrainer(model=tiny_bert(), args=MyArgs(**_kw(out_dir, my_field=9, my_token="mine")))
    assert type(trainer.args) is COTSeq2SeqTrainingArguments


@pytest.mark.parametrize("via", ["cot_subclass", "converted"])
def test_off_with_a_user_subclass_is_the_plain_trainer(out_dir, via):
    """cot_mode='off' through a user's class: the user's own COT subclass, or the converted arguments switched off."""
    data = classification_data(n=16)
    plain = Trainer(model=tiny_bert(), args=MyArgs(**_kw(f"{out_dir}/plain", max_steps=3, my_field=9)),
                    train_dataset=data)  # fmt: skip
    plain.train()
    if via == "cot_subclass":
        args = MyCOTArgs(**_kw(f"{out_dir}/cot", max_steps=3, my_field=9, cot_mode="off"))
    else:
        args = as_cot_arguments(MyArgs(**_kw(f"{out_dir}/cot", max_steps=3, my_field=9)), COTTrainingArguments)
        args.cot_mode = "off"
    cot = COTTrainer(model=tiny_bert(), args=args, train_dataset=data)
    cot.train()
    assert cot.args is args and isinstance(cot.args, MyArgs) and cot.args.my_field == 9
    assert _losses(cot) == _losses(plain) and len(_losses(plain)) == 3
    assert max_param_diff(cot.model, plain.model) == 0.0


def test_sft_config_keeps_its_tokens_and_trains_as_cot_sft_config(out_dir):
    """A plain SFTConfig used to fail: to_dict's masks made eos_token '<EOS_TOKEN>', which no tokenizer has."""
    trl = pytest.importorskip("trl")
    from hf_cot.trl import COTSFTConfig, COTSFTTrainer

    tokenizer = word_tokenizer()
    kw = dict(
        report_to=[], use_cpu=True, disable_tqdm=True, save_strategy="no", seed=2, data_seed=2, bf16=False,
        per_device_train_batch_size=4, max_steps=2, logging_steps=1, max_length=16, gradient_checkpointing=False,
        dataset_num_proc=None, eos_token="<eos>", hub_token="hf_secret", learning_rate=1e-3,
    )  # fmt: skip
    given = trl.SFTConfig(output_dir=f"{out_dir}/plain", **kw)
    before = copy.deepcopy(_values(given))
    converted = COTSFTTrainer(model=tiny_llama(), args=given, train_dataset=prompt_completion(),
                              processing_class=tokenizer)  # fmt: skip
    assert type(converted.args) is COTSFTConfig
    _assert_kept(converted.args, given, before)
    assert converted.args.eos_token == "<eos>" and converted.args.hub_token == "hf_secret"
    converted.train()
    direct = COTSFTTrainer(model=tiny_llama(), args=COTSFTConfig(output_dir=f"{out_dir}/cot", **kw),
                           train_dataset=prompt_completion(), processing_class=tokenizer)  # fmt: skip
    direct.train()
    assert _losses(converted) == _losses(direct) and len(_losses(direct)) == 2
    assert max_param_diff(converted.model, direct.model) == 0.0


def test_sft_trainer_given_training_arguments_rebuilds_them_as_trl_does(out_dir):
    trl = pytest.importorskip("trl")
    from hf_cot.trl import COTSFTConfig, COTSFTTrainer

    given = TrainingArguments(**_kw(out_dir, hub_token="hf_secret", learning_rate=0.0123))
    trainer = COTSFTTrainer(model=tiny_llama(), args=given, train_dataset=prompt_completion(),
                            processing_class=word_tokenizer())  # fmt: skip
    assert type(trainer.args) is COTSFTConfig and trainer.args.hub_token == "hf_secret"
    assert trainer.args.learning_rate == 0.0123 and trainer.args.cot_mode == "joint"
    # TRL's checks run on the converted config too
    with pytest.raises(ValueError, match="loss_type='dft' cannot be combined"):
        as_cot_arguments(trl.SFTConfig(**_kw(out_dir, bf16=False, loss_type="dft")), COTSFTConfig)


# ------------------------------------------------------------------------------------------------ random streams


def _spec_augment_classifier(seed: int = 0) -> Wav2Vec2ForSequenceClassification:
    """A tiny Wav2Vec2 classifier with SpecAugment on: its training forwards draw time masks from numpy's global
    stream (39 frames per row at 400 samples)."""
    torch.manual_seed(seed)
    config = _wav2vec2_config(num_labels=5, mask_time_length=4)
    config.mask_time_prob = 0.5
    return Wav2Vec2ForSequenceClassification(config)


def _audio_rows(n: int = 16) -> list[dict]:
    g = torch.Generator().manual_seed(1)
    return [{"input_values": torch.randn(400, generator=g), "labels": int(torch.randint(0, 5, (1,), generator=g))}
            for _ in range(n)]  # fmt: skip


def _draw_python_random_in_training(model) -> list[float]:
    """Make every training forward draw from Python's `random` too (an augmentation inside the model, say); returns
    the list of the numbers drawn."""
    calls = []

    def hook(module, args, kwargs):
        if module.training:
            calls.append(random.random())

    model.register_forward_pre_hook(hook, with_kwargs=True)
    return calls


def test_alternating_draws_nothing_from_the_run_s_streams(out_dir):
    """alternating at a zero complement learning rate logs exactly the plain Trainer's losses with SpecAugment on,
    and leaves numpy's and Python's global streams where the plain run leaves them (before, the complement forward
    drew its masks from numpy's global stream: the loss of step 2 differed)."""
    data = _audio_rows()
    kw = _kw(out_dir, max_steps=3, learning_rate=1e-2)
    finals = {}
    runs = {}
    for name in ("plain", "alternating"):
        model = _spec_augment_classifier()
        calls = _draw_python_random_in_training(model)
        if name == "plain":
            trainer = Trainer(model=model, args=TrainingArguments(**kw), train_dataset=data)
        else:
            args = COTTrainingArguments(**kw, cot_mode="alternating", complement_learning_rate=0.0)
            trainer = COTTrainer(model=model, args=args, train_dataset=data)
        trainer.train()
        finals[name] = np.random.get_state(), random.getstate()
        runs[name] = trainer, len(calls)
    (plain, plain_calls), (alternating, alternating_calls) = runs["plain"], runs["alternating"]
    assert alternating.complement_steps == 3 and alternating_calls == 2 * plain_calls  # the complement forwards ran
    assert _losses(alternating) == _losses(plain) and len(_losses(plain)) == 3
    (plain_numpy, plain_python), (alt_numpy, alt_python) = finals["plain"], finals["alternating"]
    assert plain_python == alt_python
    assert plain_numpy[0] == alt_numpy[0] and np.array_equal(plain_numpy[1], alt_numpy[1])
    assert plain_numpy[2:] == alt_numpy[2:]
    # the complement forwards drew from streams of their own, which moved from their seed
    moved = alternating._complement.rng_state
    seeded = _seeded_streams(alternating.args.seed + 1_000_003)
    assert not _same_stream(moved, seeded, "numpy") and not _same_stream(moved, seeded, "python")


def _seeded_streams(seed: int) -> dict:
    with untouched_random_streams():
        seed_streams(seed)
        return capture_streams()


def _same_stream(a: dict, b: dict, name: str) -> bool:
    """One stream (``"cpu"``, ``"numpy"``, ``"python"``) of two `capture_streams` results."""
    x, y = a[name], b[name]
    if torch.is_tensor(x):
        return torch.equal(x, y)
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) if torch.is_tensor(x[k]) else x[k] == y[k] for k in x)


def _draws() -> tuple:
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)]


def test_streams_round_trip_through_a_weights_only_checkpoint(tmp_path):
    """What the complement step saves reads back with weights_only=True and continues each stream exactly; a file
    from before numpy's and Python's streams were kept loads too, those two seeded as a fresh start seeds them; the
    streams outside the blocks are untouched."""
    with untouched_random_streams():
        seed_streams(5)
        _draws()
        state = capture_streams()
        expected = _draws()
    torch.save(state, tmp_path / "streams.pth")
    loaded = torch.load(tmp_path / "streams.pth", weights_only=True)
    before = capture_streams()
    with untouched_random_streams():
        restore_streams(loaded, seed=5)
        assert _draws() == expected
        restore_streams({"cpu": state["cpu"], "device": None}, seed=11)  # an old file: torch's stream only
        old = _draws()
        seed_streams(11)
        fresh = _draws()
    assert old[0] == expected[0] and old[1:] == fresh[1:] and fresh[1:] != expected[1:]
    after = capture_streams()
    assert all(_same_stream(before, after, name) for name in ("cpu", "numpy", "python"))


def test_alternating_resume_with_spec_augment_is_exact(out_dir, tmp_path):
    """The complement's numpy and Python streams are saved with the checkpoint and restored on resume: SpecAugment's
    masks in the complement forwards, and so the weights, are those of an uninterrupted run. A checkpoint written
    before those streams were kept still resumes (they start from their seed)."""
    data = _audio_rows()
    kw = _kw(out_dir, max_steps=4, save_strategy="steps", save_steps=2, learning_rate=1e-2, cot_mode="alternating")
    full = COTTrainer(model=_spec_augment_classifier(), args=COTTrainingArguments(**kw), train_dataset=data)
    full.train()
    checkpoint = os.path.join(out_dir, "checkpoint-2")
    saved = torch.load(os.path.join(checkpoint, "complement_rng_state_0.pth"), weights_only=True)
    assert {"cpu", "numpy", "python"} <= set(saved)

    def resume(name: str, checkpoint: str) -> COTTrainer:
        args = COTTrainingArguments(**{**kw, "output_dir": str(tmp_path / name)})
        trainer = COTTrainer(model=_spec_augment_classifier(seed=99), args=args, train_dataset=data)
        trainer.train(resume_from_checkpoint=checkpoint)
        return trainer

    assert max_param_diff(full.model, resume("resumed", checkpoint).model) == 0.0

    old = tmp_path / "old-checkpoint"
    shutil.copytree(checkpoint, old)
    torch.save({"cpu": saved["cpu"], "device": None}, old / "complement_rng_state_0.pth")
    from_old = resume("from-old", str(old))
    assert from_old.complement_steps == 4 and {"numpy", "python"} <= set(from_old._complement.rng_state)
    # control: the complement's numpy stream shapes the weights (its masks restart from the seed here)
    assert max_param_diff(full.model, from_old.model) > 0
