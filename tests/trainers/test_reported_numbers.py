"""What the COT trainers report means what the plain Trainer's same key means.

`loss` / `eval_loss` are the plain cross-entropy in every mode (checked against transformers' own trainers on the
same weights and batches), the gradient still comes from the mode's objective (checked against a float64 reference),
and `eval_complement_entropy` is the teacher-forced mean complement entropy (checked against a float64 loop).
"""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments, Trainer, TrainingArguments

from hf_cot import COTSeq2SeqTrainer, COTSeq2SeqTrainingArguments, COTTrainer, COTTrainingArguments
from testing_utils import (
    batch_of,
    causal_lm_data,
    classification_data,
    naive_entropy,
    seq2seq_data,
    tiny_bert,
    tiny_llama,
    tiny_marian,
)

MODES = ["off", "joint", "guided", "alternating"]
COMMON = dict(
    report_to=[],
    use_cpu=True,
    save_strategy="no",
    disable_tqdm=True,
    seed=5,
    data_seed=5,
    max_steps=3,
    logging_steps=1,
    per_device_eval_batch_size=5,
    # lr 0: the weights never move, so every step's loss is comparable between the runs (and dropout is 0).
    optim="sgd",
    learning_rate=0.0,
)


def _losses(trainer):
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


def _pair(kind, mode, out_dir, **kw):
    """The plain transformers trainer and the COT one, same model init, same arguments otherwise."""
    if kind == "classifier":
        model, data, plain_cls, cot_cls = tiny_bert, classification_data(n=24), Trainer, COTTrainer
        plain_args_cls, cot_args_cls = TrainingArguments, COTTrainingArguments
    elif kind == "seq2seq":
        model, data, plain_cls, cot_cls = tiny_marian, seq2seq_data(n=24), Seq2SeqTrainer, COTSeq2SeqTrainer
        plain_args_cls, cot_args_cls = Seq2SeqTrainingArguments, COTSeq2SeqTrainingArguments
    else:
        model, data, plain_cls, cot_cls = tiny_llama, causal_lm_data(n=24), Trainer, COTTrainer
        plain_args_cls, cot_args_cls = TrainingArguments, COTTrainingArguments
    plain_kw = {**COMMON, **kw.pop("plain", {}), **kw}
    cot_kw = {**COMMON, **kw.pop("cot", {}), **kw}
    plain = plain_cls(
        model=model(), args=plain_args_cls(output_dir=out_dir + "/plain", **plain_kw), train_dataset=data
    )
    cot = cot_cls(
        model=model(), args=cot_args_cls(output_dir=out_dir + "/cot", cot_mode=mode, **cot_kw), train_dataset=data
    )
    return plain, cot, data


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", ["classifier", "seq2seq"])
def test_loss_and_eval_loss_equal_the_plain_trainers(kind, mode, out_dir):
    plain, cot, data = _pair(kind, mode, out_dir)
    plain.train()
    cot.train()
    assert _losses(cot) == pytest.approx(_losses(plain), abs=1e-5)
    assert len(_losses(cot)) == 3
    eval_data = Dataset.from_list(data[:13])  # not a multiple of the eval batch size
    expected, got = plain.evaluate(eval_data), cot.evaluate(eval_data)
    assert got["eval_loss"] == pytest.approx(expected["eval_loss"], abs=1e-5)
    if mode == "off":
        assert "eval_complement_entropy" not in got  # exactly the parent
    else:
        assert 0 < got["eval_complement_entropy"]
    if mode in ("joint", "guided"):
        for line in (h for h in cot.state.log_history if "loss" in h):  # the complement part is logged next to it
            assert "complement_loss" in line and "complement_entropy" in line


@pytest.mark.parametrize("mode", ["joint", "guided", "alternating"])
def test_gradient_accumulation_averages_like_the_plain_trainer_on_a_causal_lm(mode, out_dir):
    """Llama's own loss divides by `num_items_in_batch`, so the plain Trainer averages a GA window over its tokens;
    with uneven token counts per micro-batch only that window-level average matches."""
    plain, cot, _ = _pair("causal", mode, out_dir, per_device_train_batch_size=4, gradient_accumulation_steps=2)
    plain.train()
    cot.train()
    assert _losses(cot) == pytest.approx(_losses(plain), abs=1e-5)


@pytest.mark.parametrize("mode", ["joint", "guided", "alternating"])
def test_gradient_accumulation_on_a_classifier_reports_the_window_mean(mode, out_dir):
    """BERT's loss ignores `num_items_in_batch`, so transformers 5.x sums its per-micro-batch means over a GA window
    (2x at GA 2); ours is the window's mean: batch 4 x GA 2 reports what the plain Trainer reports at batch 8."""
    plain, _, _ = _pair("classifier", "off", out_dir, per_device_train_batch_size=8)
    _, cot, _ = _pair("classifier", mode, out_dir, per_device_train_batch_size=4, gradient_accumulation_steps=2)
    plain.train()
    cot.train()
    assert _losses(cot) == pytest.approx(_losses(plain), abs=1e-5)


def _objective(mode, logits, labels, weight, alpha, scale):
    """The optimized objective in float64, from the definitions (not from hf_cot)."""
    ce = F.cross_entropy(logits, labels)
    H = naive_entropy(logits, labels)
    if mode == "joint":
        return ce - weight * H.mean() / scale
    if mode == "guided":
        p_g = torch.softmax(logits, -1).gather(1, labels[:, None]).squeeze(1)
        return (-(p_g**alpha) * H / math.log(logits.shape[-1] - 1)).mean()
    return ce


@pytest.mark.parametrize(
    "mode,norm", [("joint", "log"), ("joint", "paper"), ("guided", "log"), ("alternating", "log")]
)
def test_training_step_reports_ce_but_follows_the_objectives_gradient(mode, norm, out_dir):
    data = classification_data(n=8)
    batch = batch_of(data)
    model = tiny_bert()
    reference = copy.deepcopy(model).double()
    K, weight, alpha = 5, 0.7, 0.25
    args = COTTrainingArguments(
        output_dir=out_dir,
        report_to=[],
        use_cpu=True,
        cot_mode=mode,
        complement_weight=weight,
        guided_alpha=alpha,
        complement_normalization=norm,
    )
    trainer = COTTrainer(model=model, args=args)
    reported = trainer.training_step(model, dict(batch))

    logits = reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    scale = math.log(K - 1) if norm == "log" else K - 1
    _objective(mode, logits, batch["labels"], weight, alpha, scale).backward()
    assert reported.item() == pytest.approx(F.cross_entropy(logits.detach(), batch["labels"]).item(), abs=1e-6)
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        assert torch.allclose(p.grad.double(), q.grad, atol=1e-6, rtol=1e-4), name


def _naive_mean_entropy(model, rows, shift=False):
    """Float64 loop over every valid label of every row: the mean complement entropy, by hand."""
    values = []
    model.eval()
    with torch.no_grad():
        for row in rows:
            inputs = {k: torch.as_tensor(v)[None] for k, v in row.items()}
            logits, labels = model(**inputs).logits[0].double(), torch.as_tensor(row["labels"])
            if shift:
                logits, labels = logits[:-1], labels[1:]
            if labels.dim() == 0:
                logits, labels = logits[None], labels[None]
            for z, gold in zip(logits, labels.tolist(), strict=True):
                if gold == -100:
                    continue
                p = torch.softmax(z, -1)
                q = torch.cat([p[:gold], p[gold + 1 :]]) / (1 - p[gold])
                values.append(float(-(q * q.log()).sum()))
    return sum(values) / len(values)


@pytest.mark.parametrize("kind", ["classifier", "seq2seq", "causal"])
def test_eval_complement_entropy_is_the_mean_over_valid_labels(kind, out_dir):
    _, cot, data = _pair(kind, "joint", out_dir)
    rows = data[:13]
    got = cot.evaluate(Dataset.from_list(rows))
    expected = _naive_mean_entropy(cot.model, rows, shift=kind == "causal")
    assert got["eval_complement_entropy"] == pytest.approx(expected, rel=1e-5)
    # predict() reports it too, under its own prefix
    assert cot.predict(Dataset.from_list(rows)).metrics["test_complement_entropy"] == pytest.approx(expected, rel=1e-5)


def test_predict_with_generate_reads_the_loss_pass_logits(out_dir):
    """Seq2SeqTrainer computes the loss of a generating evaluation with its own forward (labels passed): the
    complement entropy comes from that forward, and the loss is still the model's own CE."""
    gen = dict(predict_with_generate=True, generation_max_length=6)
    plain, cot, data = _pair("seq2seq", "guided", out_dir, **gen)
    rows = Dataset.from_list(data[:13])
    got, expected = cot.evaluate(rows), plain.evaluate(rows)
    assert got["eval_loss"] == pytest.approx(expected["eval_loss"], abs=1e-5)
    assert got["eval_complement_entropy"] == pytest.approx(_naive_mean_entropy(cot.model, data[:13]), rel=1e-5)
    # ... and no extra forward: as many model calls as the plain trainer's evaluation (generate steps + loss pass)
    counts = []
    for trainer in (plain, cot):
        calls = []
        handle = trainer.model.register_forward_hook(lambda *a, calls=calls: calls.append(1))
        trainer.evaluate(rows)
        handle.remove()
        counts.append(len(calls))
    assert counts[0] == counts[1] > 0
