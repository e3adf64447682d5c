"""`hf_cot.trl` on TRL's vision-language path: `COTSFTTrainer` on a tiny LLaVA (`head_zoo.tiny_llava`) with a
processor built offline and image + text examples made here. Read on TRL 1.16.0 (trl/trainer/sft_trainer.py):
a dataset with an ``"images"`` column makes `SFTTrainer` skip dataset preparation and collate on the fly with
`DataCollatorForVisionLanguageModeling`, which runs the processor (chat template, image placeholder expansion,
pixel values) and builds the labels: prompt-completion data scores the completion only (the image placeholders are
in the prompt), language-modeling (``"messages"``) data scores every non-pad token unless ``assistant_only_loss``.

`cot_mode="off"` must be `SFTTrainer`; the COT modes at learning rate 0 must log what it logs; and what COT scores
must be the completion tokens, never an image placeholder, checked against a cross-entropy computed by hand."""

import pytest
import torch
from packaging import version

from head_zoo import IMAGE_TOKEN, tiny_llava
from testing_utils import VOCAB, naive_entropy

trl = pytest.importorskip("trl")
pytest.importorskip("PIL")

import test_trl  # noqa: E402
import transformers  # noqa: E402
from datasets import Dataset  # noqa: E402
from PIL import Image  # noqa: E402

from hf_cot.trl import COTSFTConfig, COTSFTTrainer  # noqa: E402

IMAGE_SIZE, PATCH = 16, 8  # tiny_llava's CLIP tower
USER, ASSISTANT = VOCAB - 3, VOCAB - 2  # role tokens; the image placeholder is VOCAB - 1 (IMAGE_TOKEN)
# TRL 1.16 refuses assistant_only_loss on vision data before transformers 5.18 (its assistant masks were computed
# before the image placeholders were expanded).
VISION_ASSISTANT_MASKS = version.parse(transformers.__version__) >= version.parse("5.18.0.dev0")
TRANSFORMERS_5 = version.parse(transformers.__version__).major >= 5

# Whitespace-separated words for the word-level tokenizer. Content is a string (text-only turns) or TRL's structured
# blocks (`prepare_multimodal_messages` puts {"type": "image"} before the first user text). The assistant turn sits
# in {% generation %} markers (assistant_only_loss) and ends with <eos>, which it trains.
CHAT_TEMPLATE = (
    "{% macro body(content) %}{% if content is string %}{{ content }} {% else %}{% for c in content %}"
    "{% if c['type'] == 'image' %}<image> {% elif c['type'] == 'text' %}{{ c['text'] }} {% endif %}{% endfor %}"
    "{% endif %}{% endmacro %}"
    "{% for m in messages %}{% if m['role'] == 'assistant' %}<assistant> {% generation %}{{ body(m['content']) }}"
    "<eos> {% endgeneration %}{% else %}<{{ m['role'] }}> {{ body(m['content']) }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<assistant> {% endif %}"
)


def vlm_processor():
    """A `LlavaProcessor` built offline: a word-level tokenizer (``<pad>`` 0, ``<eos>`` 1, ``w2`` .. ``w57``,
    ``<user>``, ``<assistant>``, ``<image>`` = `IMAGE_TOKEN`), a CLIP image processor at 16x16 and as many
    placeholders per image as tiny_llava's tower gives with vision_feature_select_strategy="full": 4 patches + CLS."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

    words = ["<pad>", "<eos>"] + [f"w{i}" for i in range(2, USER)] + ["<user>", "<assistant>", "<image>"]
    assert len(words) == VOCAB and words[IMAGE_TOKEN] == "<image>"
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # special: matched before the whitespace split, so that the expanded "<image><image>..." is one token each
    tok.add_special_tokens([AddedToken("<image>", special=True, normalized=False)])
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")
    image_processor = transformers.CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    return transformers.LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=PATCH, vision_feature_select_strategy="full",
        num_additional_image_tokens=1, image_token="<image>", chat_template=CHAT_TEMPLATE,
    )  # fmt: skip


def vlm_data(n=12, seed=0, messages=False):
    """One random 16x16 RGB image per example with a short user text and assistant answer, in TRL's conversational
    prompt-completion format (or language-modeling ``messages``)."""
    g = torch.Generator().manual_seed(seed)

    def words(low, high):
        k = int(torch.randint(low, high, (1,), generator=g))
        return " ".join(f"w{int(i)}" for i in torch.randint(2, USER, (k,), generator=g))

    rows = []
    for _ in range(n):
        pixels = torch.randint(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), generator=g, dtype=torch.uint8)
        user = [{"role": "user", "content": words(1, 4)}]
        assistant = [{"role": "assistant", "content": words(1, 5)}]
        row = {"messages": user + assistant} if messages else {"prompt": user, "completion": assistant}
        rows.append({"images": [Image.fromarray(pixels.numpy())], **row})
    return Dataset.from_list(rows)


@pytest.fixture(scope="module")
def processor():
    return vlm_processor()


def _config(out_dir, cls, **kw):
    return test_trl._config(out_dir, cls, **{"max_length": None, **kw})  # no truncation: it would cut image tokens


def _pair(out_dir, processor, mode, data=None, **kw):
    return test_trl._pair(
        out_dir, processor, mode, vlm_data() if data is None else data, tiny_llava, max_length=None, **kw
    )


def _lines(trainer):
    return [{k: h[k] for k in test_trl.METRICS if k in h} for h in trainer.state.log_history if "loss" in h]


def _assert_reports_what_sft_trainer_reports(cot, plain, steps=3, scales=None, rel=1e-5):
    """Each logged line of ``cot`` is ``plain``'s; ``scales``: per step, what ``cot``'s loss is times ``plain``'s."""
    got, want = _lines(cot), _lines(plain)
    assert len(got) == len(want) == steps
    for g, w, scale in zip(got, want, scales or [1.0] * steps, strict=True):
        assert g.keys() == w.keys() == set(test_trl.METRICS)
        assert g["loss"] == pytest.approx(w["loss"] * scale, rel=rel), (g, w, scale)
        for key in test_trl.METRICS[1:]:
            assert g[key] == pytest.approx(w[key], abs=1e-5), (key, g, w)


def _record_windows(trainer):
    """Per optimizer step, ``(labels of each micro-batch, num_items_in_batch)`` as the Trainer fetched them."""
    windows, fetch = [], trainer.get_batch_samples

    def get_batch_samples(*args, **kwargs):
        samples, num_items = fetch(*args, **kwargs)
        if samples:
            windows.append(([b["labels"].clone() for b in samples], num_items))
        return samples, num_items

    trainer.get_batch_samples = get_batch_samples
    return windows


def _after_assistant_token(input_ids, attention_mask):
    """Per next-token target (``[batch, seq - 1]``), whether it is a real token after the row's ``<assistant>``:
    the answer and its ``<eos>``, found from the token ids alone (no labels)."""
    after = torch.cumsum((input_ids == ASSISTANT).long(), dim=1) > 0
    after &= input_ids != ASSISTANT
    return (after & attention_mask.bool())[:, 1:]


def _scored(cot, batch):
    """What `COTSFTTrainer` scores on ``batch``: ``(loss, per-target valid mask, per-target complement entropy)``
    from its own `compute_loss` (evaluation mode, no update)."""
    cot.model.eval()
    with torch.no_grad():
        loss, outputs = cot.compute_loss(cot.model, dict(batch), return_outputs=True)
    return loss, outputs.valid, outputs.complement_entropy


def test_off_is_sft_trainer(processor, out_dir):
    """Images, processor and collator are TRL's: cot_mode='off' trains exactly as SFTTrainer (lr > 0)."""
    plain, cot = _pair(out_dir, processor, "off", learning_rate=1e-3)
    plain.train()
    cot.train()
    assert plain._is_vision_dataset and cot._is_vision_dataset
    assert len(_lines(plain)) == 3 and _lines(cot) == _lines(plain)
    for p, q in zip(plain.model.parameters(), cot.model.parameters(), strict=True):
        assert torch.equal(p, q)
    assert any(not torch.equal(p, r) for p, r in zip(cot.model.parameters(), tiny_llava().parameters(), strict=True))


@pytest.mark.parametrize("mode", ["joint", "guided", "alternating"])
def test_cot_modes_at_lr0_log_sft_trainers_loss(processor, out_dir, mode):
    """lr 0 (and so complement lr 0): the same weights at every step, so every logged number must be SFTTrainer's,
    through COT's fused head on the LLaVA backbone, and the model must be unchanged."""
    plain, cot = _pair(out_dir, processor, mode, optim="sgd", learning_rate=0.0)
    plain.train()
    cot.train()
    assert cot._cot_fused  # the image features go through the backbone; only the text head is fused
    _assert_reports_what_sft_trainer_reports(cot, plain)
    cot_line = next(h for h in cot.state.log_history if "loss" in h)
    assert cot_line["complement_entropy"] > 0 and "complement_loss" in cot_line
    if mode == "alternating":
        assert cot.complement_steps == 3
    for p, q in zip(cot.model.parameters(), tiny_llava().parameters(), strict=True):
        assert torch.equal(p, q)


def test_image_tokens_are_not_scored(processor, out_dir):
    """On a batch from SFTTrainer's own collator: the processor expands each image into as many placeholders as the
    vision tower gives features; COT scores exactly the answer tokens (never a placeholder, a prompt or a pad token)
    and its loss and complement entropy are the ones computed by hand from the model's full logits there."""
    data = vlm_data()
    cot = COTSFTTrainer(model=tiny_llava(), args=_config(out_dir, COTSFTConfig, cot_mode="joint"),
                        train_dataset=data, processing_class=processor)  # fmt: skip
    batch = cot.data_collator([data[i] for i in range(6)])
    ids, mask = batch["input_ids"], batch["attention_mask"]

    features = cot.model.model.vision_tower(batch["pixel_values"]).last_hidden_state.shape[1]
    assert features == (IMAGE_SIZE // PATCH) ** 2 + 1  # "full": the patches and CLS
    assert torch.equal((ids == IMAGE_TOKEN).sum(1), torch.full((6,), features))  # one image per row
    assert (batch["labels"][ids == IMAGE_TOKEN] == -100).all()

    loss, valid, entropy = _scored(cot, batch)
    targets = ids[:, 1:]
    expected = _after_assistant_token(ids, mask)
    assert expected.any(1).all() and not (expected & (targets == IMAGE_TOKEN)).any()
    assert torch.equal(valid.bool(), expected)

    with torch.no_grad():  # the model's own forward: full logits, no labels, no fused head
        logits = cot.model(input_ids=ids, attention_mask=mask, pixel_values=batch["pixel_values"]).logits
    logits, picked = logits[:, :-1][expected].double(), targets[expected]
    reference = -torch.log_softmax(logits, -1).gather(-1, picked[:, None]).mean()
    assert float(loss) == pytest.approx(float(reference), rel=1e-5)
    torch.testing.assert_close(entropy[expected].double(), naive_entropy(logits, picked), atol=1e-5, rtol=0)
    blank, _, _ = _scored(cot, {**batch, "pixel_values": torch.zeros_like(batch["pixel_values"])})
    assert abs(float(blank) - float(loss)) > 1e-4  # the images reach the answer through the vision tower


@pytest.mark.parametrize("assistant_only_loss", [False, True])
def test_language_modeling_data_scores_what_sft_trainer_scores(processor, out_dir, assistant_only_loss):
    """``messages`` data: TRL 1.16 labels every non-pad token there, image placeholders and each row's first token
    included, unless assistant_only_loss masks all but the assistant turns. COT scores exactly TRL's labels.

    Both divide the same summed NLL, COT by the labels that are next-token targets (``labels[:, 1:]``), SFTTrainer by
    the Trainer's ``num_items_in_batch``: the same count since transformers' fix of its causal-LM count
    (huggingface/transformers#46204); before it (4.57) all labels, position 0 included, so that SFTTrainer's loss is
    the mean times targets / labels wherever a row's first token is labelled."""
    if assistant_only_loss and not VISION_ASSISTANT_MASKS:
        pytest.skip("TRL refuses assistant_only_loss on vision data before transformers 5.18")
    data = vlm_data(messages=True)
    kw = dict(optim="sgd", learning_rate=0.0, assistant_only_loss=assistant_only_loss)
    plain, cot = _pair(out_dir, processor, "joint", data=data, **kw)
    plain_windows, cot_windows = _record_windows(plain), _record_windows(cot)
    plain.train()
    cot.train()
    scales = []
    for (labels, num_items), (cot_labels, _) in zip(plain_windows, cot_windows, strict=True):
        assert all(torch.equal(a, b) for a, b in zip(labels, cot_labels, strict=True))  # the same batches
        targets = sum(int((t[:, 1:] != -100).sum()) for t in labels)
        scales.append(1.0 if num_items is None else float(num_items) / targets)
    # transformers 4.x logs the loss rounded to 4 decimals
    _assert_reports_what_sft_trainer_reports(cot, plain, scales=scales, rel=1e-5 if TRANSFORMERS_5 else 5e-5)
    batch = cot.data_collator([data[i] for i in range(6)])
    _, valid, _ = _scored(cot, batch)
    assert torch.equal(valid.bool(), batch["labels"][:, 1:] != -100)
    if assistant_only_loss:
        assert torch.equal(valid.bool(), _after_assistant_token(batch["input_ids"], batch["attention_mask"]))
        assert not (valid.bool() & (batch["input_ids"][:, 1:] == IMAGE_TOKEN)).any()
