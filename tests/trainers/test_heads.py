"""Scored as the model scores itself: one tiny model per head family, in every COT mode, against the model's own loss;
heads with no single target refused at construction; every LM class transformers lists decided without a model."""

import copy
import inspect
import math
import re
import warnings

import pytest
import torch
import torch.nn.functional as F
import transformers

from head_zoo import FAMILIES, family, own_loss, tiny_segformer, tiny_wav2vec2_ctc
from hf_cot import COTTrainer, COTTrainingArguments
from hf_cot.alignment_check import AlignmentMismatchError
from hf_cot.heads import CAUSAL_LM, MASKED_LM, SEQ2SEQ_LM, UNSHIFTED_LM, UnsupportedHeadError, head_for, head_for_class
from testing_utils import naive_entropy

MODES = ["alternating", "joint", "guided"]


def _args(out_dir, **kw):
    base = dict(
        output_dir=out_dir, report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True, seed=4,
        per_device_train_batch_size=6, per_device_eval_batch_size=6, max_steps=1, learning_rate=0.0,
        logging_steps=1, remove_unused_columns=False,
    )  # fmt: skip
    base.update(kw)
    return COTTrainingArguments(**base)


def _rows(batch):
    n = next(iter(batch.values())).shape[0]
    return [{k: v[i] for k, v in batch.items()} for i in range(n)]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", FAMILIES)
def test_training_and_eval_loss_are_the_models_own_loss(name, mode, out_dir):
    """At learning rate 0 the logged training loss of the one step (one batch) and ``eval_loss`` are the model's own
    loss on that batch (dropout 0: train and eval forwards agree)."""
    model, batch = family(name)
    expected = own_loss(model, batch)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no "binary classification" warning for 4 choices
        trainer = COTTrainer(model=model, args=_args(out_dir, cot_mode=mode), train_dataset=_rows(batch))
    trainer.train()
    logged = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert logged == [pytest.approx(expected, rel=1e-5, abs=6e-5)]  # transformers 4.x logs 4 decimals
    assert trainer.evaluate(_rows(batch))["eval_loss"] == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("name", ["gemma3", "llava"])
def test_multimodal_lms_get_the_fused_head(name, out_dir):
    """Decoder-only multimodal LMs apply their head to the language model's last hidden state: no logits built."""
    model, batch = family(name)
    trainer = COTTrainer(model=model, args=_args(out_dir), train_dataset=_rows(batch))
    assert trainer._cot_fused


def _reference(mode, pairs, weight=0.7, alpha=0.25):
    """float64, from the definitions: the mean over targets of each target's mean objective."""
    objectives = []
    for logits, labels in pairs:
        valid = labels != -100
        z, y = logits[valid].double(), labels[valid]
        ce, entropy = F.cross_entropy(z, y), naive_entropy(z, y)
        if mode == "joint":
            objectives.append(ce - weight * entropy.mean() / math.log(z.shape[-1] - 1))
        else:
            p_g = torch.softmax(z, -1).gather(1, y[:, None]).squeeze(1)
            objectives.append((-(p_g**alpha) * entropy / math.log(z.shape[-1] - 1)).mean())
    return torch.stack(objectives).mean()


@pytest.mark.parametrize("mode", ["joint", "guided"])
@pytest.mark.parametrize("name", ["multiple_choice", "question_answering"])
def test_gradient_follows_the_objective_over_choices_and_positions(name, mode, out_dir):
    """Multiple choice: K = the choices. QA: COT over positions for the start and for the end, averaged as the
    model averages its two cross-entropies; positions past the sequence ignored, negative ones clamped to 0."""
    model, batch = family(name)
    reference = copy.deepcopy(model)
    args = _args(out_dir, cot_mode=mode, complement_weight=0.7, guided_alpha=0.25)
    trainer = COTTrainer(model=model, args=args)
    trainer.current_gradient_accumulation_steps = 1
    trainer.training_step(model, dict(batch))

    if name == "multiple_choice":
        pairs = [(reference(**{k: v for k, v in batch.items() if k != "labels"}).logits, batch["labels"])]
    else:
        out = reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        length = out.start_logits.shape[1]
        pairs = []
        for logits, positions in (
            (out.start_logits, batch["start_positions"]),
            (out.end_logits, batch["end_positions"]),
        ):
            positions = positions.clamp(0, length)
            pairs.append((logits, positions.masked_fill(positions == length, -100)))
    _reference(mode, pairs).backward()
    for (param_name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        if q.grad is None:
            continue
        assert torch.allclose(p.grad, q.grad, atol=1e-6, rtol=1e-4), param_name


def test_guided_works_with_four_choices_and_is_refused_with_two(out_dir):
    model, batch = family("multiple_choice")
    two = {**batch, "input_ids": batch["input_ids"][:, :2], "attention_mask": batch["attention_mask"][:, :2],
           "labels": batch["labels"] % 2}  # fmt: skip
    trainer = COTTrainer(model=model, args=_args(out_dir, cot_mode="guided"), train_dataset=_rows(two))
    with pytest.raises(ValueError, match="cannot train a binary classifier"):
        trainer.train()


@pytest.mark.parametrize(
    "make, reason",
    [(tiny_wav2vec2_ctc, "CTC"), (tiny_segformer, "segmentation")],
)
@pytest.mark.parametrize("mode", MODES)
def test_heads_without_a_single_target_are_refused_at_construction(make, reason, mode, out_dir):
    model = make()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=reason) as err:
        COTTrainer(model=model, args=_args(out_dir, cot_mode=mode))
    assert "cot_mode='off'" in str(err.value)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    COTTrainer(model=model, args=_args(out_dir, cot_mode="off"))  # the plain Trainer accepts it


@pytest.mark.parametrize(
    "class_name",
    ["DetrForObjectDetection", "Wav2Vec2ForAudioFrameClassification", "ViltForQuestionAnswering", "BertModel"],
)
def test_more_refusals_are_decided_from_the_mappings(class_name):
    with pytest.raises(UnsupportedHeadError):
        head_for_class(getattr(transformers, class_name))


# ----------------------------------------------------------------------------------------------- the guard


class _ShiftingClassifier(transformers.BertForTokenClassification):
    """A home-made subclass whose forward scores position t against label t + 1: no table can know that."""

    def forward(self, input_ids=None, attention_mask=None, labels=None, **kw):
        out = super().forward(input_ids=input_ids, attention_mask=attention_mask)
        if labels is not None:
            logits = out.logits[:, :-1]
            out.loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1))
        return out


@pytest.mark.parametrize("mode", MODES)
def test_a_model_scored_otherwise_is_refused_before_the_first_update(mode, out_dir):
    model, batch = family("token")
    model = _ShiftingClassifier(model.config)
    before = copy.deepcopy(model.state_dict())
    trainer = COTTrainer(
        model=model, args=_args(out_dir, cot_mode=mode, learning_rate=0.1), train_dataset=_rows(batch)
    )
    with pytest.raises(AlignmentMismatchError, match=r"_ShiftingClassifier.*label t \+ 1"):
        trainer.train()
    with pytest.raises(AlignmentMismatchError):  # a retry is refused again, not waved through as checked
        trainer.train()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_the_guard_leaves_the_random_stream_alone(out_dir):
    """Two runs from one seed, one with the guard: the training random numbers (dropout) are the same."""
    model, batch = family("sequence")
    model.config.hidden_dropout_prob = 0.3
    results = []
    for check in (True, False):
        trainer = COTTrainer(
            model=copy.deepcopy(model), args=_args(out_dir, learning_rate=0.1, max_steps=2, per_device_train_batch_size=3),
            train_dataset=_rows(batch),
        )  # fmt: skip
        if not check:
            trainer._cot_first_batch.checked_model = trainer.model
        trainer.train()
        results.append([e["loss"] for e in trainer.state.log_history if "loss" in e])
    assert results[0] == results[1]


# ------------------------------------------------------------------- every LM class transformers lists


def _listed(*mapping_names):
    import transformers.models.auto.modeling_auto as auto

    for mapping_name in mapping_names:
        for model_type, value in getattr(auto, mapping_name, {}).items():
            for class_name in value if isinstance(value, (tuple, list)) else (value,):
                yield model_type, class_name


LM_MAPPINGS = (
    "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES",
    "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES",
    "MODEL_FOR_MASKED_LM_MAPPING_NAMES",
    "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES",
    "MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES",
    "MODEL_FOR_VISION_2_SEQ_MAPPING_NAMES",
)
_SHIFT = re.compile(r"\.\.\., *:-1|\[:, *:-1|:-1\]|shift_logits|shift_labels")
_LOSS = re.compile(r"CrossEntropyLoss|cross_entropy")


def test_every_language_model_class_is_decided_and_agrees_with_its_forward():
    """No model is built: each class of transformers' LM mappings, with its default config, gets an LM head, and
    the decision agrees with what its forward does: a shifted head for a forward that shifts (or calls
    transformers' causal loss function), an unshifted one for a forward that scores logits against labels as they
    are. A new architecture whose forward disagrees fails here instead of training another objective."""
    from transformers import CONFIG_MAPPING

    checked, disagree = 0, []
    for model_type, class_name in sorted(set(_listed(*LM_MAPPINGS))):
        cls = getattr(transformers, class_name, None)
        if cls is None:
            continue  # not importable in this environment (missing optional dependency)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                config = CONFIG_MAPPING[model_type]()
        except Exception:  # composite configs (encoder-decoder wrappers) need their parts on transformers 4.x
            continue
        try:
            head = head_for_class(cls, config)
        except UnsupportedHeadError:
            continue  # refused with a reason (audio codebooks)
        assert head in (CAUSAL_LM, MASKED_LM, SEQ2SEQ_LM, UNSHIFTED_LM), (class_name, head)
        checked += 1
        try:
            source = inspect.getsource(cls.forward)
        except (OSError, TypeError):
            continue
        if head is CAUSAL_LM and _LOSS.search(source) and not (_SHIFT.search(source) or "loss_function" in source):
            disagree.append(f"{class_name}: decided causal (shift), its forward scores without a shift")
        if head is UNSHIFTED_LM and ("loss_function" in source or _SHIFT.search(source)):
            disagree.append(f"{class_name}: decided unshifted, its forward shifts")
        if head is SEQ2SEQ_LM and "decoder_input_ids" not in inspect.signature(cls.forward).parameters:
            disagree.append(f"{class_name}: decided encoder-decoder, its forward takes no decoder_input_ids")
    assert checked > 150, checked
    assert disagree == []


def test_subclasses_and_remote_code_models_are_decided_from_what_transformers_knows():
    class MyLlama(transformers.LlamaForCausalLM):
        pass

    class RemoteLM(torch.nn.Module):  # a remote-code class, declared through its config's auto_map
        pass

    config = transformers.LlamaConfig(auto_map={"AutoModelForCausalLM": "modeling_remote.RemoteLM"})
    assert head_for_class(MyLlama, config) is CAUSAL_LM
    assert head_for_class(RemoteLM, config) is CAUSAL_LM
    assert head_for_class(RemoteLM, transformers.LlamaConfig()).task.startswith("unknown")
    assert head_for(family("whisper")[0]) is SEQ2SEQ_LM
    assert head_for(family("xlm")[0]) is MASKED_LM
    assert head_for(family("bart_decoder")[0]) is UNSHIFTED_LM
