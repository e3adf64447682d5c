"""`cot_fused_lm_head`: causal LMs train on their hidden states through the head chunk by chunk, with the same
parameters, logs and evaluation numbers as with the materialized logits; models it cannot serve keep the logits."""

import copy

import pytest
import torch

from hf_cot import COTTrainer, COTTrainingArguments
from hf_cot.fused_lm_head import fused_lm_head_problem
from hf_cot.head_transforms import HeadTransform, head_transform
from testing_utils import batch_of, causal_lm_data, max_param_diff, tiny_causal_lm, tiny_token_classifier

MODES = ["joint", "guided", "alternating"]


def _args(out_dir, **kw):
    base = dict(
        output_dir=out_dir, report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True, seed=3, data_seed=3,
        per_device_train_batch_size=4, max_steps=3, learning_rate=3e-3, logging_steps=1, complement_weight=0.7,
        guided_alpha=0.25,
    )  # fmt: skip
    base.update(kw)
    return COTTrainingArguments(**base)


def _tiny(kind):
    import transformers as tf

    torch.manual_seed(0)
    common = dict(vocab_size=64, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=1, max_position_embeddings=64, pad_token_id=0, eos_token_id=1, bos_token_id=1)  # fmt: skip
    if kind == "gemma2":  # final_logit_softcapping
        return tf.Gemma2ForCausalLM(tf.Gemma2Config(head_dim=16, final_logit_softcapping=0.7, **common))
    if kind == "cohere":  # logit_scale
        return tf.CohereForCausalLM(tf.CohereConfig(logit_scale=0.25, **common))
    return tiny_causal_lm(kind, vocab_size=64)


def _train(model, out_dir, data, **kw):
    trainer = COTTrainer(model=model, args=_args(out_dir, **kw), train_dataset=data)
    trainer.train()
    return trainer


def _logs(trainer):
    keys = ("loss", "complement_entropy", "complement_loss")
    return [{k: h[k] for k in keys if k in h} for h in trainer.state.log_history if "loss" in h]


def _assert_logs_close(a, b):
    assert len(a) == len(b) and a
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            assert x[key] == pytest.approx(y[key], abs=1e-5), key


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", ["llama", "gpt2", "qwen2"])  # gpt2 and qwen2 tie the head to the embeddings
def test_fused_training_equals_the_materialized_logits(kind, mode, tmp_path):
    data = causal_lm_data(n=12, seed=1)  # -100 prompts and padding, uneven lengths
    model = _tiny(kind)
    fused = _train(copy.deepcopy(model), tmp_path / "f", data, cot_mode=mode, gradient_accumulation_steps=2)
    plain = _train(model, tmp_path / "m", data, cot_mode=mode, gradient_accumulation_steps=2, cot_fused_lm_head=False)
    assert fused._cot_fused and not plain._cot_fused
    assert max_param_diff(fused.model, plain.model) <= 1e-5
    _assert_logs_close(_logs(fused), _logs(plain))


def test_gradient_checkpointing_through_the_backbone(tmp_path):
    data = causal_lm_data(n=8, seed=6)
    model = _tiny("llama")
    kw = dict(cot_mode="joint", gradient_checkpointing=True)
    fused = _train(copy.deepcopy(model), tmp_path / "f", data, **kw)
    plain = _train(model, tmp_path / "m", data, cot_fused_lm_head=False, **kw)
    assert fused._cot_fused
    assert max_param_diff(fused.model, plain.model) <= 1e-5


@pytest.mark.parametrize("kind", ["gemma2", "cohere"])
def test_soft_capping_and_logit_scale_are_applied(kind, tmp_path):
    model = _tiny(kind)
    expected = HeadTransform(softcap=0.7) if kind == "gemma2" else HeadTransform(logit_scale=0.25)
    assert head_transform(model) == expected
    data = causal_lm_data(n=8, seed=2)
    fused = _train(copy.deepcopy(model), tmp_path / "f", data, cot_mode="joint")
    plain = _train(model, tmp_path / "m", data, cot_mode="joint", cot_fused_lm_head=False)
    assert fused._cot_fused
    assert max_param_diff(fused.model, plain.model) <= 1e-5
    _assert_logs_close(_logs(fused), _logs(plain))


def test_the_head_module_never_runs_in_fused_training(tmp_path):
    """No [tokens, vocabulary] logits of a batch: the lm_head module only runs in the model's own forward of the first
    batch's check (`hf_cot.alignment_check`: two rows, without gradients); hf-cot's side of the check runs the fused
    head, as training does. Its weight still trains."""
    model = _tiny("llama")
    rows = []
    model.lm_head.register_forward_hook(lambda m, i, o: rows.append((o.shape[0], torch.is_grad_enabled())))
    before = model.lm_head.weight.detach().clone()
    _train(model, tmp_path, causal_lm_data(n=8), cot_mode="joint")
    assert rows == [(2, False)] and not torch.equal(before, model.lm_head.weight)


def test_evaluation_numbers_and_predictions_match(tmp_path):
    data = causal_lm_data(n=10, seed=4)
    model = _tiny("llama")
    results = {}
    for fused in (None, False):
        trainer = COTTrainer(
            model=copy.deepcopy(model), args=_args(tmp_path, cot_fused_lm_head=fused, per_device_eval_batch_size=3)
        )
        metrics = trainer.evaluate(data)  # no compute_metrics: loss only, the fused head serves it
        prediction = trainer.predict(data)  # predictions need the logits: built as usual
        results[fused] = metrics, prediction
    (fused_metrics, fused_pred), (plain_metrics, plain_pred) = results[None], results[False]
    for key in ("eval_loss", "eval_complement_entropy"):
        assert fused_metrics[key] == pytest.approx(plain_metrics[key], abs=1e-6), key
    assert fused_pred.predictions.shape == plain_pred.predictions.shape == (10, 10, 64)
    assert fused_pred.metrics["test_loss"] == pytest.approx(plain_pred.metrics["test_loss"], abs=1e-6)


def test_generation_is_unchanged_after_installation(tmp_path):
    model = _tiny("llama")
    reference = copy.deepcopy(model)
    trainer = COTTrainer(model=model, args=_args(tmp_path))
    assert trainer._cot_fused
    prompt = torch.tensor([[1, 5, 9, 3]])
    kwargs = dict(max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert torch.equal(model.generate(prompt, **kwargs), reference.generate(prompt, **kwargs))


class PreShifted:
    """A collator that hands the labels over pre-shifted, as context parallelism does: ``shift_labels[:, t]`` is the
    label of position t (the next token), the last position -100. Training batches carry no ``labels`` at all;
    evaluation batches carry ``labels`` of -100 only (so the Trainer computes a loss, and any use of them shows)."""

    def __init__(self, train: bool):
        self.train = train

    def __call__(self, features):
        batch = batch_of(features)
        labels = batch.pop("labels")
        batch["shift_labels"] = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=-100)
        if not self.train:
            batch["labels"] = torch.full_like(labels, -100)
        return batch


@pytest.mark.parametrize("fused", [None, False])
@pytest.mark.parametrize("mode", ["joint", "guided", "alternating"])
def test_pre_shifted_labels_train_like_shifted_ones(mode, fused, tmp_path):
    data = causal_lm_data(n=12, seed=1)
    model = _tiny("llama")
    kw = dict(cot_mode=mode, cot_fused_lm_head=fused, gradient_accumulation_steps=2)
    plain = _train(copy.deepcopy(model), tmp_path / "p", data, **kw)
    args = _args(tmp_path / "s", **kw)
    pre = COTTrainer(model=copy.deepcopy(model), args=args, train_dataset=data, data_collator=PreShifted(train=True))
    pre.train()
    assert pre._cot_fused is (fused is None)
    assert max_param_diff(pre.model, plain.model) <= 1e-6
    _assert_logs_close(_logs(pre), _logs(plain))
    pre.data_collator = PreShifted(train=False)
    got, want = pre.evaluate(data), plain.evaluate(data)
    for key in ("eval_loss", "eval_complement_entropy"):
        assert got[key] == pytest.approx(want[key], abs=1e-6), key


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_a_copy_of_the_model_computes_with_its_own_weights(how, tmp_path):
    """EMA callbacks, reference models and model soups copy the trained model: the copy's ordinary and fused forwards
    must use the copy's parameters (a closure over the original's bound forward would keep using the original's)."""
    import pickle

    model = _tiny("llama")
    COTTrainer(model=model, args=_args(tmp_path))  # installs the fused forward
    copy_ = copy.deepcopy(model) if how == "deepcopy" else pickle.loads(pickle.dumps(model))
    batch = batch_of(causal_lm_data(n=2))
    torch.testing.assert_close(copy_(**batch).logits, model(**batch).logits)
    before = model(**batch).logits.detach().clone()
    with torch.no_grad():
        for p in copy_.parameters():
            p.zero_()
    assert (copy_(**batch).logits == 0).all()  # zero weights, no bias: zero logits
    assert torch.equal(model(**batch).logits, before)  # the original is untouched
    fused = copy_(**batch, cot_fused_lm_head=True)  # all logits 0: every complement entropy is log(V - 1)
    valid = fused.valid
    torch.testing.assert_close(
        fused.complement_entropy[valid], torch.full_like(fused.complement_entropy[valid], 63.0).log()
    )
    prompt, kwargs = torch.tensor([[1, 5, 9, 3]]), dict(max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert torch.equal(copy_.generate(prompt, **kwargs)[0, 4:], torch.zeros(4, dtype=torch.long))  # argmax of zeros
    assert not torch.equal(model.generate(prompt, **kwargs)[0, 4:], torch.zeros(4, dtype=torch.long))


def test_lora_adapters_train_the_same(tmp_path):
    peft = pytest.importorskip("peft")
    data = causal_lm_data(n=8, seed=5)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    base = _tiny("llama")
    adapted = peft.get_peft_model(copy.deepcopy(base), config)  # one random LoRA init for both runs
    fused = _train(copy.deepcopy(adapted), tmp_path / "f", data, cot_mode="guided")
    plain = _train(adapted, tmp_path / "m", data, cot_mode="guided", cot_fused_lm_head=False)
    assert fused._cot_fused
    assert max_param_diff(fused.model, plain.model) <= 1e-5
    # a LoRA-wrapped head is not a plain linear layer: the logits are built, and requiring the fused head says why
    head_config = peft.LoraConfig(r=4, target_modules=["q_proj", "lm_head"], task_type="CAUSAL_LM")
    wrapped = peft.get_peft_model(copy.deepcopy(base), head_config)
    assert "not a plain torch.nn.Linear" in fused_lm_head_problem(wrapped)
    with pytest.raises(ValueError, match="cot_fused_lm_head=True cannot be used.*not a plain torch.nn.Linear"):
        COTTrainer(model=wrapped, args=_args(tmp_path, cot_fused_lm_head=True))


@pytest.mark.parametrize(
    "make,kw,problem",
    [
        (lambda: tiny_causal_lm("bert_decoder", vocab_size=64), {}, "does not apply its head directly"),
        (tiny_token_classifier, {}, "not a causal LM"),
        (lambda: _tiny("llama"), {"label_smoothing_factor": 0.1}, "label_smoothing_factor"),
    ],
)
def test_models_the_fused_head_cannot_serve_keep_the_logits(make, kw, problem, tmp_path):
    with pytest.warns(UserWarning) if kw else _no_warning():
        auto = COTTrainer(model=make(), args=_args(tmp_path, **kw))
    assert not auto._cot_fused
    with pytest.raises(ValueError, match=f"cot_fused_lm_head=True cannot be used: .*{problem}"):
        COTTrainer(model=make(), args=_args(tmp_path, cot_fused_lm_head=True, **kw))


def test_off_mode_leaves_the_model_alone(tmp_path):
    model = _tiny("llama")
    trainer = COTTrainer(model=model, args=_args(tmp_path, cot_mode="off"))
    assert not trainer._cot_fused and "forward" not in vars(model)


def _no_warning():
    import contextlib

    return contextlib.nullcontext()


def test_sharded_or_quantized_heads_are_named():
    model = _tiny("llama")
    assert fused_lm_head_problem(model, distributed="FSDP1 keeps ...") == "FSDP1 keeps ..."  # the engine's reason
    assert fused_lm_head_problem(model) is None
    model.lm_head = torch.nn.utils.parametrize.register_parametrization(
        model.lm_head, "weight", torch.nn.Identity()
    )  # a head whose weight is computed: not a plain nn.Linear any more
    assert "not a plain torch.nn.Linear" in fused_lm_head_problem(model)


def test_a_head_wrapped_after_construction_is_refused_at_the_next_step(tmp_path):
    model = _tiny("llama")
    trainer = COTTrainer(model=model, args=_args(tmp_path), train_dataset=causal_lm_data(n=8))
    assert trainer._cot_fused
    model.lm_head = torch.nn.utils.parametrize.register_parametrization(model.lm_head, "weight", torch.nn.Identity())
    with pytest.raises(TypeError, match="plain nn.Linear.*--cot_fused_lm_head false"):
        trainer.train()
