"""The swap at its edges: what a plain `Trainer` call accepts, COT accepts too, with the numbers the plain Trainer gives
(no `args`, plain `TrainingArguments`, `model_init`, `hyperparameter_search`, empty evaluation batches, `evaluate()`'s
dict, binary heads in `alternating`, the refusals' messages, `average_tokens_across_devices`, `torch.compile`)."""

import copy
import os

import pytest
import torch
from transformers import Trainer, TrainingArguments

from hf_cot import COTArgumentsMixin, COTTrainer, COTTrainingArguments
from hf_cot.losses import check_label_range
from testing_utils import causal_lm_data, classification_data, max_param_diff, tiny_bert, tiny_llama

COT_FIELDS = set(COTArgumentsMixin.__dataclass_fields__)


def _kw(out_dir, **kw):
    base = dict(
        output_dir=out_dir, report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True, seed=3, data_seed=3,
        per_device_train_batch_size=4, max_steps=3, logging_steps=1, learning_rate=1e-3,
    )  # fmt: skip
    base.update(kw)
    return base


# ------------------------------------------------------------------------------------------------ construction


def test_no_args_builds_the_cot_defaults_as_the_parent_builds_its_own(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    plain, cot = Trainer(model=tiny_bert()), COTTrainer(model=tiny_bert())
    assert type(cot.args) is COTTrainingArguments and cot.args.cot_mode == "joint"
    ours, theirs = {k: v for k, v in cot.args.to_dict().items() if k not in COT_FIELDS}, plain.args.to_dict()
    # transformers 4.x names the default logging_dir after the clock (runs/<Mon><DD>_<HH>-<MM>-<SS>_<host>): the two
    # constructions may fall in different seconds on a loaded machine, so the folder it sits in is what must agree.
    for built in (ours, theirs):
        if built.get("logging_dir"):
            built["logging_dir"] = os.path.dirname(built["logging_dir"])
    assert ours == theirs


@pytest.mark.parametrize("positional", [False, True])
def test_plain_training_arguments_are_converted_with_their_values(out_dir, positional):
    given = TrainingArguments(**_kw(out_dir, learning_rate=0.0123, weight_decay=0.1, gradient_accumulation_steps=2))
    trainer = COTTrainer(tiny_bert(), given) if positional else COTTrainer(model=tiny_bert(), args=given)
    assert type(trainer.args) is COTTrainingArguments and trainer.args.cot_mode == "joint"
    assert {k: v for k, v in trainer.args.to_dict().items() if k not in COT_FIELDS} == given.to_dict()


# ------------------------------------------------------------------------------- model_init and hyper-parameter search


@pytest.mark.parametrize("mode", ["joint", "alternating"])
def test_model_init_with_a_causal_lm_trains_as_a_given_model(mode, out_dir):
    """The model `model_init` builds for train() gets the fused head too: same parameters as passing the model."""
    data = causal_lm_data(n=12)
    args = COTTrainingArguments(**_kw(out_dir, cot_mode=mode))
    given = COTTrainer(model=tiny_llama(), args=args, train_dataset=data)
    given.train()
    built = COTTrainer(model_init=lambda: tiny_llama(), args=COTTrainingArguments(**_kw(out_dir, cot_mode=mode)),
                       train_dataset=data)  # fmt: skip
    built.train()
    assert built._cot_fused and max_param_diff(given.model, built.model) == 0.0


def test_hyperparameter_search_follows_cot_fields_and_refuses_the_mode(out_dir):
    pytest.importorskip("optuna")
    data = classification_data(n=16)
    trainer = COTTrainer(model_init=lambda: tiny_bert(), args=COTTrainingArguments(**_kw(out_dir, max_steps=2)),
                         train_dataset=data, eval_dataset=data[:8])  # fmt: skip
    weights = []

    def hp_space(trial):
        weights.append(trial.suggest_float("complement_weight", 0.1, 2.0))
        return {"complement_weight": weights[-1]}

    best = trainer.hyperparameter_search(hp_space=hp_space, n_trials=2, direction="minimize", backend="optuna")
    assert best.hyperparameters["complement_weight"] in weights and trainer.args.complement_weight == weights[-1]
    # the complement weight a trial chose is the one its training used: the logged complement loss scales with it
    with pytest.raises(ValueError, match="cannot change cot_mode"):
        trainer.hyperparameter_search(hp_space=lambda t: {"cot_mode": "guided"}, n_trials=1, backend="optuna")


# ---------------------------------------------------------------------------------------------- reported numbers


@pytest.mark.parametrize("mode", ["alternating", "joint", "guided"])
def test_an_evaluation_batch_without_labels_is_left_out_as_the_plain_trainer_leaves_it(mode, out_dir):
    """Batches of one row; one row all -100 (a truncated prompt): the plain Trainer's loss for it is NaN and
    dropped from eval_loss; ours too, not averaged in as a 0."""
    rows = causal_lm_data(n=4, seed=5)
    rows[2] = {**rows[2], "labels": torch.full_like(rows[2]["labels"], -100)}
    kw = _kw(out_dir, per_device_eval_batch_size=1)
    plain = Trainer(model=tiny_llama(), args=TrainingArguments(**kw)).evaluate(rows)["eval_loss"]
    ours = COTTrainer(model=tiny_llama(), args=COTTrainingArguments(**kw, cot_mode=mode)).evaluate(rows)["eval_loss"]
    assert ours == pytest.approx(plain, rel=1e-5) or (ours != ours and plain != plain)  # NaN both on 4.x


@pytest.mark.parametrize("mode", ["off", "joint"])
def test_evaluate_returns_the_dict_the_plain_trainer_returns(mode, out_dir):
    data = classification_data(n=8)
    trainer = COTTrainer(model=tiny_bert(), args=COTTrainingArguments(**_kw(out_dir, cot_mode=mode)),
                         train_dataset=data)  # fmt: skip
    trainer.train()
    result = trainer.evaluate(data)
    assert result["epoch"] == trainer.state.epoch
    assert {**result, "step": trainer.state.global_step} == trainer.state.log_history[-1]  # what was logged


def test_alternating_on_a_binary_head_leaves_the_weights_as_off_does(out_dir):
    """K = 2: the complement is empty; no second optimizer step (which would apply AdamW's weight decay again)."""
    data = classification_data(n=12, num_labels=2)
    models = []
    for mode in ("off", "alternating"):
        with pytest.warns(UserWarning, match="binary") if mode != "off" else _nothing():
            trainer = COTTrainer(model=tiny_bert(num_labels=2),
                                 args=COTTrainingArguments(**_kw(out_dir, cot_mode=mode, weight_decay=0.1)),
                                 train_dataset=data)  # fmt: skip
        trainer.train()
        models.append(trainer.model)
    assert max_param_diff(*models) == 0.0
    assert trainer.complement_steps == 0 and trainer.complement_skipped_steps == 3


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# ---------------------------------------------------------------------------------------------------- refusals


def test_a_batch_without_its_label_key_names_it(out_dir):
    trainer = COTTrainer(model=tiny_bert(), args=COTTrainingArguments(**_kw(out_dir)))
    batch = {k: v for k, v in trainer.data_collator(classification_data(n=2)).items() if k != "labels"}
    with pytest.raises(ValueError, match="no 'labels' key"):
        trainer.compute_loss(trainer.model, batch)


def test_use_liger_kernel_is_refused_by_the_arguments(out_dir):
    with pytest.raises(ValueError, match="use_liger_kernel cannot be combined"):
        COTTrainingArguments(**_kw(out_dir, use_liger_kernel=True))
    COTTrainingArguments(**_kw(out_dir, use_liger_kernel=True, cot_mode="off"))


def test_lora_on_the_head_names_peft_s_class(out_dir):
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(tiny_llama(), peft.LoraConfig(r=2, target_modules=["lm_head"]))
    with pytest.raises(ValueError, match=r"peft\.tuners\.lora\.layer\.Linear"):
        COTTrainer(model=model, args=COTTrainingArguments(**_kw(out_dir, cot_fused_lm_head=True)))


def test_average_tokens_across_devices_false_normalizes_by_each_process_s_own_count(out_dir):
    """One process stands in for rank 0 of 2: with the flag on, the window count is the global one over the
    processes; off, the local count (the mean of the processes' means, as the plain Trainer does)."""
    trainer = COTTrainer(model=tiny_bert(), args=COTTrainingArguments(**_kw(out_dir)))
    trainer._cot_window_count = torch.tensor([6])
    trainer.accelerator.state.num_processes = 2
    try:
        assert float(trainer._window_denominator()[0]) == 3.0
        trainer.args.average_tokens_across_devices = False
        assert float(trainer._window_denominator()[0]) == 6.0
    finally:
        trainer.accelerator.state.num_processes = 1


# ---------------------------------------------------------------------------------------------------- compile


def test_the_label_check_keeps_a_compiled_graph_whole_and_still_fails():
    import torch._dynamo

    labels, logits = torch.tensor([1, 2, -100]), torch.randn(3, 5)

    def loss(labels, logits):
        check_label_range(labels, logits.shape[-1])
        return torch.nn.functional.cross_entropy(logits, labels, ignore_index=-100)

    assert torch._dynamo.explain(loss)(labels, logits).graph_break_count == 0
    with pytest.raises(ValueError, match="label 7 is outside"):
        loss(torch.tensor([1, 7, -100]), logits)
    torch._dynamo.reset()


def test_copies_of_a_model_init_model_keep_working(out_dir):
    trainer = COTTrainer(model_init=lambda: tiny_llama(), args=COTTrainingArguments(**_kw(out_dir, max_steps=1)),
                         train_dataset=causal_lm_data(n=4))  # fmt: skip
    trainer.train()
    clone = copy.deepcopy(trainer.model)
    batch = trainer.data_collator(causal_lm_data(n=2))
    out = clone(**{k: v for k, v in batch.items() if k != "labels"}, labels=batch["labels"], cot_fused_lm_head=True)
    assert out.log_probs.shape == batch["labels"][:, 1:].shape
