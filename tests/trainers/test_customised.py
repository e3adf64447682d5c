"""Checked as it trains, and what a user customised kept or refused: the first-batch check runs the path that trains
(the fused head where it is on) on two rows with different label counts; a model without a loss, a non-finite loss,
float labels; a user's `compute_loss` under or over COT; class weights; the search objective; resuming with another
mode; the run's random streams around the check."""

import math
import random
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel, LlamaForCausalLM, Trainer, TrainingArguments
from transformers.modeling_outputs import CausalLMOutputWithPast, SequenceClassifierOutput

from hf_cot import AlignmentMismatchError, COTMixin, COTTrainer, COTTrainingArguments
from testing_utils import (
    batch_of,
    causal_lm_data,
    classification_data,
    max_param_diff,
    naive_entropy,
    tiny_bert,
    tiny_llama,
)


def _kw(out_dir, **kw):
    base = dict(
        output_dir=str(out_dir), report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True, seed=3,
        data_seed=3, per_device_train_batch_size=4, max_steps=2, logging_steps=1, learning_rate=1e-2,
    )  # fmt: skip
    base.update(kw)
    return base


def _args(out_dir, **kw):
    return COTTrainingArguments(**_kw(out_dir, **kw))


def _losses(trainer):
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


# ------------------------------------------------------------------------------- the check runs what trains


def _half_logits_llama():
    """A Llama whose head's output is halved by a forward hook: a transform no config or forward source shows, which the
    fused head (projecting with the head's weight, never calling the module) cannot see; the logits path sees it."""
    model = tiny_llama()
    model.lm_head.register_forward_hook(lambda module, args, output: output * 0.5)
    return model


def test_a_fused_head_that_misses_a_transform_falls_back_to_the_logits(out_dir):
    """The fused head trains unless the check finds it off: then a warning with both numbers, and the logits path,
    whose loss is the model's own."""
    data = causal_lm_data(n=4)  # one batch: the whole set
    model = _half_logits_llama()
    own = model(**batch_of(data)).loss.item()
    trainer = COTTrainer(model=model, args=_args(out_dir, learning_rate=0.0, max_steps=1), train_dataset=data)
    assert trainer._cot_fused
    with pytest.warns(UserWarning, match=r"fused LM head does not reproduce LlamaForCausalLM's loss.*logits"):
        trainer.train()
    assert not trainer._cot_fused and "forward" not in vars(trainer.model)  # the fused forward is gone
    assert _losses(trainer) == [pytest.approx(own, rel=1e-5)]


def test_a_fused_head_asked_for_that_misses_a_transform_is_refused(out_dir):
    data = causal_lm_data(n=8)
    trainer = COTTrainer(model=_half_logits_llama(), args=_args(out_dir, cot_fused_lm_head=True), train_dataset=data)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    with pytest.raises(AlignmentMismatchError, match="cot_fused_lm_head=True was asked for"):
        trainer.train()
    assert all(torch.equal(p, q) for p, q in zip(trainer.model.parameters(), before, strict=True))


class RowMeanLlama(LlamaForCausalLM):
    """Its own loss is the mean over rows of each row's token mean: the token mean only on rows of equal length."""

    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
        out = super().forward(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        loss = None
        if labels is not None:
            per_token = F.cross_entropy(
                out.logits[:, :-1].transpose(1, 2), labels[:, 1:], ignore_index=-100, reduction="none"
            )
            counts = (labels[:, 1:] != -100).sum(1)
            loss = (per_token.sum(1) / counts.clamp(min=1))[counts > 0].mean()
        return CausalLMOutputWithPast(loss=loss, logits=out.logits)


def test_a_per_row_mean_is_seen_by_the_two_row_check(out_dir):
    """One row cannot tell a mean of row means from the token mean; two rows with different label counts can."""
    model = RowMeanLlama(tiny_llama().config)
    trainer = COTTrainer(model=model, args=_args(out_dir), train_dataset=causal_lm_data(n=8))
    with pytest.raises(AlignmentMismatchError, match="RowMeanLlama"):
        trainer.train()


class NaNRowModel(torch.nn.Module):
    """A classifier with its own loss; NaN inputs give NaN logits."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(4, 5)

    def forward(self, x, labels=None):
        logits = self.linear(x)
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


def test_a_non_finite_own_loss_trains_on_as_the_plain_trainer(out_dir):
    """NaN in a row's inputs: no head-mismatch error whichever rows the check takes, NaN weights as in the plain
    run."""
    data = [{"x": torch.randn(4, generator=torch.Generator().manual_seed(i)), "labels": i % 5} for i in range(8)]
    data[0]["x"] = torch.full((4,), float("nan"))
    kw = _kw(out_dir, max_steps=1, per_device_train_batch_size=8, logging_nan_inf_filter=False)
    plain = Trainer(model=NaNRowModel(), args=TrainingArguments(**kw), train_dataset=data)
    plain.train()
    cot = COTTrainer(model=NaNRowModel(), args=COTTrainingArguments(**kw),
                     train_dataset=data)  # fmt: skip
    cot.train()
    assert math.isnan(_losses(plain)[0]) and math.isnan(_losses(cot)[0])
    assert torch.isnan(cot.model.linear.weight).any() == torch.isnan(plain.model.linear.weight).any()


@pytest.mark.parametrize("cls", [Trainer, COTTrainer])
def test_transformers_logging_inf_nan_filter(cls, out_dir):
    """transformers' own test (tests/trainer: `test_logging_inf_nan_filter`), the swap in `joint`: a GPT-2 diverged by
    a learning rate of 1e9 logs NaN / inf losses without the filter and none with it."""
    config = GPT2Config(vocab_size=100, n_positions=128, n_embd=32, n_layer=3, n_head=4)
    tiny_gpt2 = GPT2LMHeadModel(config)
    x = torch.randint(0, 100, (128,))
    train_dataset = [{"input_ids": x, "labels": x}] * 64
    args_cls = TrainingArguments if cls is Trainer else COTTrainingArguments
    histories = []
    for nan_filter in (False, True):
        args = args_cls(
            str(out_dir), learning_rate=1e9, logging_steps=5, logging_nan_inf_filter=nan_filter, report_to=[],
            use_cpu=True, max_steps=10, save_strategy="no", disable_tqdm=True,
        )  # fmt: skip
        trainer = cls(tiny_gpt2, args, train_dataset=train_dataset)
        trainer.train()
        histories.append(trainer.state.log_history)

    def any_nan_or_inf(history):
        return any(math.isnan(e["loss"]) or math.isinf(e["loss"]) for e in history if "loss" in e)

    assert any_nan_or_inf(histories[0]) and not any_nan_or_inf(histories[1])


def test_float_labels_get_a_message_of_their_own(out_dir):
    data = classification_data(n=8)
    for row in data:
        row["labels"] = float(row["labels"])
    trainer = COTTrainer(model=tiny_bert(), args=_args(out_dir), train_dataset=data)
    with pytest.raises(ValueError, match="COT needs integer class labels.*torch.float32"):
        trainer.train()


class NumpyNoiseModel(NaNRowModel):
    """Draws from numpy's and Python's global streams in every forward (as SpecAugment masks or augmentations do)."""

    def forward(self, x, labels=None):
        noise = torch.from_numpy(np.random.rand(*x.shape)).float() * 0.1 + random.random() * 0.1
        return super().forward(x + noise, labels)


def test_the_check_leaves_numpy_and_python_streams_as_the_plain_run_has_them(out_dir):
    """`joint` at complement weight 0 trains as the plain Trainer, even where the forward draws from numpy and
    Python's `random`: the check's extra forwards draw from saved-and-restored streams."""
    data = [{"x": torch.randn(4, generator=torch.Generator().manual_seed(i)), "labels": i % 5} for i in range(16)]
    runs = []
    for cls, args in (
        (Trainer, TrainingArguments(**_kw(out_dir, max_steps=3))),
        (COTTrainer, _args(out_dir, max_steps=3, complement_weight=0.0)),
    ):
        np.random.seed(0), random.seed(0)
        trainer = cls(model=NumpyNoiseModel(), args=args, train_dataset=data)
        trainer.train()
        runs.append((trainer, np.random.rand(), random.random()))
    (plain, *plain_next), (cot, *cot_next) = runs
    assert _losses(cot) == pytest.approx(_losses(plain), abs=1e-6)
    assert max_param_diff(cot.model, plain.model) <= 1e-6 and cot_next == plain_next


# ------------------------------------------------------------------------------- users' losses


class WeightedTrainer(Trainer):
    """The recipe transformers' docs give for class weights: a `compute_loss` override."""

    weights = torch.tensor([1.0, 2.0, 0.5, 3.0, 1.5])

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        loss = F.cross_entropy(outputs.logits.view(-1, 5), labels.view(-1), weight=self.weights)
        return (loss, outputs) if return_outputs else loss


def test_a_compute_loss_under_cot_is_refused_naming_it(out_dir):
    class X(COTMixin, WeightedTrainer):
        _args_class = COTTrainingArguments

    model = tiny_bert()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"WeightedTrainer overrides compute_loss.*class_weights"):
        X(model=model, args=_args(out_dir))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # in `off` the user's loss is what trains: X is the WeightedTrainer
    data = classification_data(n=8)
    off = X(model=tiny_bert(), args=_args(out_dir, cot_mode="off"), train_dataset=data)
    plain = WeightedTrainer(model=tiny_bert(), args=TrainingArguments(**_kw(out_dir)), train_dataset=data)
    off.train(), plain.train()
    assert _losses(off) == pytest.approx(_losses(plain), abs=1e-6)


def test_a_cot_subclass_that_never_calls_cots_loss_is_warned(out_dir):
    class Bypass(COTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            return model(**inputs).loss

    class Composed(COTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    data = classification_data(n=8)
    with pytest.warns(UserWarning, match=r"Bypass.compute_loss never calls COT's.*cot_mode='joint' is bypassed"):
        Bypass(model=tiny_bert(), args=_args(out_dir), train_dataset=data).train()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        trainer = Composed(model=tiny_bert(), args=_args(out_dir), train_dataset=data)
        trainer.train()
    assert "complement_entropy" in trainer.state.log_history[0]


WEIGHTS = [1.0, 2.0, 0.5, 3.0, 1.5]


def test_class_weights_in_off_are_the_weighted_trainer_recipe(out_dir):
    data = classification_data(n=16)
    plain = WeightedTrainer(model=tiny_bert(), args=TrainingArguments(**_kw(out_dir, max_steps=3)),
                            train_dataset=data)  # fmt: skip
    plain.train()
    off = COTTrainer(model=tiny_bert(), args=_args(out_dir, max_steps=3, cot_mode="off", class_weights=WEIGHTS),
                     train_dataset=data)  # fmt: skip
    off.train()
    assert _losses(off) == pytest.approx(_losses(plain), rel=1e-6)
    assert max_param_diff(off.model, plain.model) <= 1e-6
    assert "complement_entropy" not in off.state.log_history[0]
    assert off.evaluate(data)["eval_loss"] == pytest.approx(plain.evaluate(data)["eval_loss"], rel=1e-6)


@pytest.mark.parametrize("mode", ["joint", "guided", "alternating"])
def test_class_weights_weight_both_terms_by_the_ground_truth_class(mode, out_dir):
    """The gradient of one training step against a float64 reference from the definitions: sum_i w_gi * term_i /
    sum_i w_gi, for CE and the complement term (alternating: its CE step)."""
    model = tiny_bert()
    reference = tiny_bert()
    batch = batch_of(classification_data(n=8))
    args = _args(out_dir, cot_mode=mode, class_weights=WEIGHTS, complement_weight=0.7, guided_alpha=0.25)
    trainer = COTTrainer(model=model, args=args)
    trainer.current_gradient_accumulation_steps = 1
    trainer.training_step(model, dict(batch))

    logits = reference(**{k: v for k, v in batch.items() if k != "labels"}).logits.double()
    labels = batch["labels"]
    w = torch.tensor(WEIGHTS, dtype=torch.float64)[labels]
    ce = F.cross_entropy(logits, labels, reduction="none")
    entropy = naive_entropy(logits, labels) / math.log(4)
    if mode == "joint":
        per_row = ce - 0.7 * entropy
    elif mode == "guided":
        per_row = -(torch.softmax(logits, -1).gather(1, labels[:, None]).squeeze(1) ** 0.25) * entropy
    else:
        per_row = ce
    ((w * per_row).sum() / w.sum()).backward()
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        if q.grad is not None:
            assert torch.allclose(p.grad, q.grad.float(), atol=1e-6, rtol=1e-4), name


def test_class_weights_are_refused_where_they_mean_nothing(out_dir):
    with pytest.raises(ValueError, match="one weight per class"):
        COTTrainer(model=tiny_bert(num_labels=5), args=_args(out_dir, class_weights=[1.0, 2.0]))
    with pytest.raises(ValueError, match="classification head"):
        COTTrainer(model=tiny_llama(), args=_args(out_dir, class_weights=[1.0] * 5))
    with pytest.raises(ValueError, match="finite and >= 0"):
        _args(out_dir, class_weights=[1.0, -1.0, 1.0])
    with pytest.raises(ValueError, match="label_smoothing_factor"):
        _args(out_dir, class_weights=[1.0, 2.0, 1.0], label_smoothing_factor=0.1)


# ------------------------------------------------------------------------------- search, resume


def test_hyperparameter_search_compares_trials_on_eval_loss(out_dir):
    pytest.importorskip("optuna")
    data = classification_data(n=16)
    trainer = COTTrainer(model_init=lambda: tiny_bert(), args=_args(out_dir, max_steps=2), train_dataset=data,
                         eval_dataset=data[:8])  # fmt: skip
    seen, evaluate = [], trainer.evaluate

    def recording_evaluate(*args, **kwargs):
        seen.append(evaluate(*args, **kwargs))
        return seen[-1]

    trainer.evaluate = recording_evaluate
    best = trainer.hyperparameter_search(
        hp_space=lambda trial: {"complement_weight": trial.suggest_float("complement_weight", 0.1, 2.0)},
        n_trials=1, direction="minimize", backend="optuna",
    )  # fmt: skip
    assert "eval_complement_entropy" in seen[-1]
    assert best.objective == seen[-1]["eval_loss"]


def test_resuming_with_another_mode_says_what_it_drops(out_dir):
    data = classification_data(n=16)
    first = COTTrainer(model=tiny_bert(), args=_args(out_dir, cot_mode="alternating", save_strategy="steps",
                                                     save_steps=2, max_steps=2), train_dataset=data)  # fmt: skip
    first.train()
    resumed = COTTrainer(model=tiny_bert(), args=_args(out_dir, cot_mode="joint", max_steps=3), train_dataset=data)
    with pytest.warns(UserWarning, match=r"saved with cot_mode='alternating'.*cot_mode='joint'.*complement optimizer"):
        resumed.train(resume_from_checkpoint=True)
