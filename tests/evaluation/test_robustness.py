"""FGSM and PGD in embedding space (``hf_cot.robustness``) against independent computations.

* A bag-of-embeddings linear classifier, where FGSM has a closed form: the loss gradient with respect to every token
  embedding is the same vector ``g = W^T (softmax(z) - onehot(y))``, so FGSM adds ``eps * n * W sign(g)`` to the
  logits, ``n`` being the number of non-padding tokens. The model deliberately reads padding positions too, so
  perturbing them would change the answer.
* A tiny random-init BERT, against a hand-rolled attack run one unpadded example at a time.
* PGD: with one step of size epsilon and no random start it is FGSM; it never beats clean accuracy and never gains
  from more steps from the same start; and a one-dimensional "bump" classifier whose iterates are worked out by hand.
"""

import copy

import numpy as np
import pytest
import torch
from transformers.modeling_outputs import SequenceClassifierOutput

from hf_cot.robustness import fgsm_embedding_accuracy, format_fgsm_results, pgd_embedding_accuracy
from testing_utils import VOCAB
from testing_utils import tiny_bert as shared_tiny_bert

NUM_LABELS = 5


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
    return shared_tiny_bert(num_labels=NUM_LABELS, seed=seed)


def make_rows(n=24, seed=0, min_len=3, max_len=10):
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        length = int(rng.integers(min_len, max_len + 1))
        ids = rng.integers(1, VOCAB, size=length).tolist()
        rows.append(
            {
                "input_ids": ids,
                "attention_mask": [1] * length,
                "token_type_ids": [0] * length,
                "label": int(rng.integers(0, NUM_LABELS)),
                "text": "ignored column",
            }
        )
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
        # Correct under attack = right on the clean input and on the attacked one.
        correct += int(np.argmax(z) == r["label"] and np.argmax(z_adv) == r["label"])
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
            clean_ok = model(inputs_embeds=embeds).logits.argmax(-1).item() == r["label"]
            for eps in EPSILONS:
                pred = model(inputs_embeds=embeds + eps * step).logits.argmax(-1).item()
                hand[eps] += int(clean_ok and pred == r["label"])
    model.zero_grad(set_to_none=True)
    assert result == pytest.approx({eps: c / len(rows) for eps, c in hand.items()})


def test_epsilon_zero_is_clean_accuracy_and_large_epsilon_does_not_help():
    model = tiny_bert(seed=3)
    rows = make_rows(n=40, seed=4)
    batch = pad_collator(rows)
    model.eval()
    with torch.no_grad():
        clean_logits = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            token_type_ids=batch["token_type_ids"],
        ).logits
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
    pgd_embedding_accuracy(model, rows, [0.0, 0.1], steps=2, batch_size=4, data_collator=pad_collator)
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)

    model.eval()
    fgsm_embedding_accuracy(model, rows, [0.1], batch_size=4, data_collator=pad_collator)
    pgd_embedding_accuracy(model, rows, [0.1], steps=2, loss="margin", batch_size=4, data_collator=pad_collator)
    assert not model.training


def test_default_collator_on_equal_length_rows_and_batch_size_invariance():
    model = tiny_bert(seed=7)
    rows = make_rows(n=12, seed=8, min_len=6, max_len=6)  # equal lengths: default_data_collator needs no padding
    a = fgsm_embedding_accuracy(model, rows, [0.0, 0.3], batch_size=12)
    b = fgsm_embedding_accuracy(model, rows, [0.0, 0.3], batch_size=1)
    assert a == pytest.approx(b)


@pytest.mark.parametrize("attack", [fgsm_embedding_accuracy, pgd_embedding_accuracy])
def test_rejects_bad_epsilons_and_losses(attack):
    model, rows = BagOfEmbeddings(), make_rows(n=2)
    for epsilons in ([-0.1], []):
        with pytest.raises(ValueError, match="epsilons"):
            attack(model, rows, epsilons, data_collator=pad_collator)
    with pytest.raises(ValueError, match="loss"):
        attack(model, rows, [0.1], loss="hinge", data_collator=pad_collator)


def test_pgd_rejects_bad_steps_and_step_sizes():
    model, rows = BagOfEmbeddings(), make_rows(n=2)
    for steps in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="steps"):
            pgd_embedding_accuracy(model, rows, [0.1], steps=steps, data_collator=pad_collator)
    with pytest.raises(ValueError, match="step_size"):
        pgd_embedding_accuracy(model, rows, [0.1], step_size=0.0, data_collator=pad_collator)


# ------------------------------------------------------------------------------------------------------------- PGD


@pytest.mark.parametrize("loss", ["ce", "margin"])
def test_pgd_one_step_of_size_epsilon_without_random_start_is_fgsm(loss):
    torch.manual_seed(0)
    cases = [
        (BagOfEmbeddings(), make_rows(n=64, seed=1), 64, [0.01, 0.05, 0.1, 0.2, 0.5, 1.0]),
        (tiny_bert(seed=3), make_rows(n=24, seed=4), 5, [0.001, 0.002, 0.004, 0.008, 0.03]),
    ]
    for model, rows, batch_size, epsilons in cases:
        kwargs = {"loss": loss, "batch_size": batch_size, "data_collator": pad_collator}
        fgsm = fgsm_embedding_accuracy(model, rows, [0.0, *epsilons], **kwargs)
        pgd = {
            eps: pgd_embedding_accuracy(model, rows, [eps], steps=1, step_size=eps, random_start=False, **kwargs)[eps]
            for eps in epsilons
        }
        assert pgd == pytest.approx({eps: fgsm[eps] for eps in epsilons})
        assert len(set(pgd.values())) > 2  # the epsilons span weak to strong attacks
        assert pgd_embedding_accuracy(model, rows, [0.0], **kwargs) == pytest.approx({0.0: fgsm[0.0]})


@pytest.mark.parametrize("loss", ["ce", "margin"])
def test_pgd_never_beats_clean_accuracy_nor_gains_from_more_steps(loss):
    """Same random start and step size, 1 to 4 steps: with "broken at any point visited", more steps visit a
    superset of the points, so accuracy cannot rise; and no attack beats the clean accuracy."""
    model = tiny_bert(seed=3)
    rows = make_rows(n=24, seed=4)
    epsilons = [0.0, 0.002, 0.004, 0.008]
    kwargs = {"step_size": 0.001, "loss": loss, "seed": 1, "batch_size": 8, "data_collator": pad_collator}
    by_steps = [pgd_embedding_accuracy(model, rows, epsilons, steps=steps, **kwargs) for steps in (1, 2, 4)]
    clean = fgsm_embedding_accuracy(model, rows, [0.0], batch_size=8, data_collator=pad_collator)[0.0]
    for eps in epsilons:
        curve = [result[eps] for result in by_steps]
        assert all(acc <= clean for acc in curve)
        assert curve == sorted(curve, reverse=True), (eps, curve)
    assert all(result[0.0] == clean for result in by_steps)
    assert by_steps[-1][0.008] < clean  # the attack does break examples


def test_pgd_random_start_is_seeded_and_independent_of_batching():
    model = tiny_bert(seed=7)
    rows = make_rows(n=16, seed=8)  # different lengths: each batch size pads differently
    with torch.no_grad():  # gold = the clean prediction, so every example can be broken
        batch = pad_collator(rows)
        pred = model.eval()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.argmax(-1)
    rows = [{**row, "label": int(p)} for row, p in zip(rows, pred, strict=True)]
    loaders = [{"batch_size": b, "data_collator": pad_collator} for b in (1, 5, 16)]
    loaders.append({"dataset_or_dataloader": torch.utils.data.DataLoader(rows, batch_size=3, collate_fn=pad_collator)})
    # The start alone (a negligible step): what it breaks depends on the seed, and on nothing else.
    start_only = []
    for seed in range(4):
        results = [
            pgd_embedding_accuracy(model, **{"dataset_or_dataloader": rows, **loader}, epsilons=[0.01, 0.02],
                                   steps=1, step_size=1e-6, loss="margin", seed=seed)
            for loader in loaders
        ]  # fmt: skip
        assert all(result == pytest.approx(results[0]) for result in results)
        start_only.append(results[0])
    assert len({tuple(result.values()) for result in start_only}) > 1
    # The full attack, whatever the batching.
    results = [
        pgd_embedding_accuracy(model, **{"dataset_or_dataloader": rows, **loader}, epsilons=[0.002, 0.005], steps=3)
        for loader in loaders
    ]
    assert all(result == pytest.approx(results[0]) for result in results)
    assert 0 < results[0][0.005] < results[0][0.002] < 1


class Bump(torch.nn.Module):
    """One embedding coordinate per token; s = sum over all positions (padding included), logits = [0, f(s)] with
    f(s) = 0.1 - 10 (s - 0.2)^2: class 1 wins exactly on 0.1 < s < 0.3, and f'(0.2) = 0."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(8, 1)
        with torch.no_grad():
            self.embed.weight.zero_()  # tokens 1 and 7 (the padding id of pad_collator): 0.0
            self.embed.weight[2, 0] = -0.6
            self.embed.weight[3, 0] = 0.2

    def get_input_embeddings(self):
        return self.embed

    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None, token_type_ids=None):
        s = inputs_embeds.sum(dim=(1, 2))
        f = 0.1 - 10 * (s - 0.2) ** 2
        return SequenceClassifierOutput(logits=torch.stack([torch.zeros_like(f), f], dim=-1))


def bump_row(ids, label):
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "token_type_ids": [0] * len(ids), "label": label}


@pytest.mark.parametrize("loss", ["ce", "margin"])
def test_pgd_hand_checked_on_a_one_dimensional_bump(loss):
    """epsilon 0.5, step 0.16, no random start (with two classes both losses step along the sign of +-f'(s)):

    * A = [1], gold 0, s = 0: f = -0.3, right; f'(0) > 0, step to s = 0.16: f = 0.084 > 0, broken. (A second step
      would go on to s = 0.32, f = -0.044, right again: only the any-step rule counts A as broken. In a batch A is
      padded to width 2; perturbing the padding too would jump to s = 0.32 and miss the bump.) FGSM jumps straight
      to s = 0.5 (f = -0.8): right.
    * B = [2, 2], gold 0, s = -1.2: every point within reach has s <= -0.2, f < 0: right under every attack.
    * C = [3], gold 1, s = 0.2 on the peak: the gradient is exactly 0, so FGSM and PGD without a random start
      never move (right); from a random start s != 0.2 and every step moves away from the peak: broken.
    * D = [3], gold 0: wrong on the clean input, so wrong under attack.
    """
    model = Bump()
    a, b, c, d = bump_row([1], 0), bump_row([2, 2], 0), bump_row([3], 1), bump_row([3], 0)
    rows = [a, b, c, d]
    no_start = {"step_size": 0.16, "random_start": False, "loss": loss, "data_collator": pad_collator}
    for batch_size in (1, 4):
        for steps in (1, 2):
            result = pgd_embedding_accuracy(model, rows, [0.5], steps=steps, batch_size=batch_size, **no_start)
            assert result == {0.5: 0.5}  # B and C
        fgsm = fgsm_embedding_accuracy(model, rows, [0.0, 0.5], loss=loss, batch_size=batch_size,
                                       data_collator=pad_collator)  # fmt: skip
        assert fgsm == {0.0: 0.75, 0.5: 0.75}  # A, B and C
    with torch.no_grad():  # A's second iterate, s = 0.32, alone would be classified right
        assert model(inputs_embeds=torch.full((1, 1, 1), 0.32)).logits.argmax(-1).item() == 0
    assert pgd_embedding_accuracy(model, [c], [0.5], steps=2, **no_start) == {0.5: 1.0}
    for seed in range(5):
        random_start = {**no_start, "random_start": True, "seed": seed}
        assert pgd_embedding_accuracy(model, [c], [0.5], steps=1, **random_start) == {0.5: 0.0}


def test_format_fgsm_results():
    formatted = format_fgsm_results({0.0: 0.9, 0.01: 0.75, 0.1: 0.5, 1e-05: 0.875})
    assert formatted == {
        "fgsm_accuracy_eps_0": 0.9,
        "fgsm_accuracy_eps_0.01": 0.75,
        "fgsm_accuracy_eps_0.1": 0.5,
        "fgsm_accuracy_eps_1e-05": 0.875,
    }
