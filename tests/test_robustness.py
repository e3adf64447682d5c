"""FGSM in embedding space (``hf_cot.robustness``) against independent computations.

* A bag-of-embeddings linear classifier, where the attack has a closed form: the loss gradient with respect to
  every token embedding is the same vector ``g = W^T (softmax(z) - onehot(y))``, so FGSM adds
  ``eps * n * W sign(g)`` to the logits, ``n`` being the number of non-padding tokens. The model deliberately reads
  padding positions too, so perturbing them would change the answer.
* A tiny random-init BERT, against a hand-rolled attack run one unpadded example at a time.
"""

import copy

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification
from transformers.modeling_outputs import SequenceClassifierOutput

from hf_cot.robustness import fgsm_embedding_accuracy, format_fgsm_results

NUM_LABELS = 5
VOCAB = 99


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Tiny models gain nothing from intra-op threads, and on a loaded 2-core machine the spinning threads made
    these tests ~50x slower (37 s instead of 0.5 s for the hand-rolled attack)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


class BagOfEmbeddings(torch.nn.Module):
    """logits = W (sum of all token embeddings, padding included) + b."""

    def __init__(self, vocab=VOCAB, dim=8, num_labels=NUM_LABELS):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, dim)
        self.head = torch.nn.Linear(dim, num_labels)

    def get_input_embeddings(self):
        return self.embed

    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None, token_type_ids=None):
        if inputs_embeds is None:
            inputs_embeds = self.embed(input_ids)
        return SequenceClassifierOutput(logits=self.head(inputs_embeds.sum(dim=1)))


def tiny_bert(seed=0):
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=37, num_labels=NUM_LABELS, max_position_embeddings=32)
    return BertForSequenceClassification(config)


def make_rows(n=24, seed=0, min_len=3, max_len=10):
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        length = int(rng.integers(min_len, max_len + 1))
        ids = rng.integers(1, VOCAB, size=length).tolist()
        rows.append({"input_ids": ids, "attention_mask": [1] * length, "token_type_ids": [0] * length,
                     "label": int(rng.integers(0, NUM_LABELS)), "text": "ignored column"})
    return rows


def pad_collator(rows, pad_id=7):
    """Right-pads to the longest row. Padding uses a real token id so that reading it would matter."""
    width = max(len(r["input_ids"]) for r in rows)

    def pad(seq, value):
        return list(seq) + [value] * (width - len(seq))

    return {
        "input_ids": torch.tensor([pad(r["input_ids"], pad_id) for r in rows]),
        "attention_mask": torch.tensor([pad(r["attention_mask"], 0) for r in rows]),
        "token_type_ids": torch.tensor([pad(r["token_type_ids"], 0) for r in rows]),
        "labels": torch.tensor([r["label"] for r in rows]),
    }


def closed_form_accuracy(model, rows, eps, pad_id=7, perturb_padding=False):
    """Accuracy of the bag-of-embeddings model under FGSM, in numpy, from the formula in the module docstring."""
    E = model.embed.weight.detach().double().numpy()
    W = model.head.weight.detach().double().numpy()
    b = model.head.bias.detach().double().numpy()
    width = max(len(r["input_ids"]) for r in rows)
    correct = 0
    for r in rows:
        ids = list(r["input_ids"]) + [pad_id] * (width - len(r["input_ids"]))
        z = W @ E[ids].sum(axis=0) + b
        p = np.exp(z - z.max())
        p /= p.sum()
        onehot = np.eye(len(b))[r["label"]]
        direction = np.sign(W.T @ (p - onehot))
        n = width if perturb_padding else len(r["input_ids"])
        z_adv = z + eps * n * (W @ direction)
        correct += int(np.argmax(z_adv) == r["label"])
    return correct / len(rows)


EPSILONS = [0.0, 0.01, 0.05, 0.1, 0.2, 0.5, 1.0]


def test_matches_closed_form_on_a_linear_model_and_skips_padding():
    torch.manual_seed(0)
    model = BagOfEmbeddings()
    rows = make_rows(n=64, seed=1)
    # batch_size 64 puts every row in one padded batch: rows shorter than the longest carry padding.
    result = fgsm_embedding_accuracy(model, rows, EPSILONS, batch_size=64, data_collator=pad_collator)
    expected = {eps: closed_form_accuracy(model, rows, eps) for eps in EPSILONS}
    assert result == pytest.approx(expected)
    # The check has teeth: perturbing the padding as well would give different accuracies.
    with_padding = {eps: closed_form_accuracy(model, rows, eps, perturb_padding=True) for eps in EPSILONS}
    assert with_padding != expected
    # The attack pushes every logit vector along the loss-increasing direction: accuracy falls overall.
    assert result[1.0] < result[0.0]


def test_tiny_bert_matches_a_hand_rolled_attack_one_example_at_a_time():
    model = tiny_bert()
    rows = make_rows(n=24, seed=2)
    result = fgsm_embedding_accuracy(model, rows, EPSILONS, batch_size=5, data_collator=pad_collator)

    model.eval()
    hand = dict.fromkeys(EPSILONS, 0)
    for r in rows:
        ids = torch.tensor([r["input_ids"]])
        embeds = model.bert.embeddings.word_embeddings(ids).detach().requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(model(inputs_embeds=embeds).logits, torch.tensor([r["label"]]))
        loss.backward()
        step = embeds.grad.sign()
        with torch.no_grad():
            for eps in EPSILONS:
                pred = model(inputs_embeds=embeds + eps * step).logits.argmax(-1).item()
                hand[eps] += int(pred == r["label"])
    model.zero_grad(set_to_none=True)
    assert result == pytest.approx({eps: c / len(rows) for eps, c in hand.items()})


def test_epsilon_zero_is_clean_accuracy_and_large_epsilon_does_not_help():
    model = tiny_bert(seed=3)
    rows = make_rows(n=40, seed=4)
    batch = pad_collator(rows)
    model.eval()
    with torch.no_grad():
        clean_logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             token_type_ids=batch["token_type_ids"]).logits
    clean = (clean_logits.argmax(-1) == batch["labels"]).float().mean().item()
    loader = torch.utils.data.DataLoader(rows, batch_size=8, collate_fn=pad_collator)
    result = fgsm_embedding_accuracy(model, loader, [0.0, 0.5, 1.0, 2.0])
    assert result[0.0] == pytest.approx(clean)
    assert np.mean([result[0.5], result[1.0], result[2.0]]) <= result[0.0]
    assert list(result) == [0.0, 0.5, 1.0, 2.0]


def test_parameters_untouched_no_grad_left_and_training_flag_restored():
    model = tiny_bert(seed=5)
    model.train()
    before = copy.deepcopy(model.state_dict())
    rows = make_rows(n=10, seed=6)
    fgsm_embedding_accuracy(model, rows, [0.0, 0.1], batch_size=4, data_collator=pad_collator)
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)

    model.eval()
    fgsm_embedding_accuracy(model, rows, [0.1], batch_size=4, data_collator=pad_collator)
    assert not model.training


def test_default_collator_on_equal_length_rows_and_batch_size_invariance():
    model = tiny_bert(seed=7)
    rows = make_rows(n=12, seed=8, min_len=6, max_len=6)  # equal lengths: default_data_collator needs no padding
    a = fgsm_embedding_accuracy(model, rows, [0.0, 0.3], batch_size=12)
    b = fgsm_embedding_accuracy(model, rows, [0.0, 0.3], batch_size=1)
    assert a == pytest.approx(b)


def test_rejects_bad_epsilons():
    model = BagOfEmbeddings()
    with pytest.raises(ValueError):
        fgsm_embedding_accuracy(model, make_rows(n=2), [-0.1], data_collator=pad_collator)
    with pytest.raises(ValueError):
        fgsm_embedding_accuracy(model, make_rows(n=2), [], data_collator=pad_collator)


def test_format_fgsm_results():
    formatted = format_fgsm_results({0.0: 0.9, 0.01: 0.75, 0.1: 0.5, 1e-05: 0.875})
    assert formatted == {
        "fgsm_accuracy_eps_0": 0.9,
        "fgsm_accuracy_eps_0.01": 0.75,
        "fgsm_accuracy_eps_0.1": 0.5,
        "fgsm_accuracy_eps_1e-05": 0.875,
    }
