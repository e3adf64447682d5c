"""The local ``evaluate`` metric modules in ``hf_cot/metrics``: values checked against hand computations and
against the libraries called directly, and loading checked to work offline from a fresh modules cache."""

import math
import os
import subprocess
import sys

import pytest

pytest.importorskip("evaluate")
sacrebleu = pytest.importorskip("sacrebleu")
pytest.importorskip("sklearn")

from hf_cot import metrics


@pytest.fixture(scope="module")
def classification():
    return metrics.load("classification_metrics")


@pytest.fixture(scope="module")
def translation():
    return metrics.load("translation_metrics")


@pytest.fixture(scope="module")
def complement():
    return metrics.load("complement_entropy")


def test_available_and_unknown_name():
    assert metrics.available() == ["classification_metrics", "complement_entropy", "translation_metrics"]
    with pytest.raises(ValueError, match="unknown hf_cot metric"):
        metrics.metric_path("accuracy")


def test_lazy_import_and_offline_load_from_an_empty_modules_cache(tmp_path):
    # One subprocess for both checks (importing torch/transformers dominates its cost): `import hf_cot` must not
    # import evaluate, and loading by path must work offline with nothing cached.
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_EVALUATE_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HOME=str(tmp_path / "hf"))
    code = (
        "import sys, hf_cot, hf_cot.metrics\n"
        "assert 'evaluate' not in sys.modules, 'import hf_cot imported evaluate'\n"
        "from hf_cot import metrics\n"
        "print(metrics.load('classification_metrics').compute(predictions=[1, 0], references=[1, 1])['accuracy'])"
    )
    out = subprocess.run([sys.executable, "-c", code], check=False, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "0.5"
    assert any((tmp_path / "modules").rglob("classification_metrics.py"))


def test_accuracy_and_macro_f1_by_hand(classification):
    references = [0, 0, 1, 1, 2, 2]
    predictions = [0, 1, 1, 1, 2, 0]
    # accuracy: positions 0, 2, 3, 4 are right -> 4/6.
    # class 0: TP 1, FP 1, FN 1 -> F1 1/2; class 1: TP 2, FP 1, FN 0 -> P 2/3, R 1, F1 4/5;
    # class 2: TP 1, FP 0, FN 1 -> P 1, R 1/2, F1 2/3. Macro-F1 = (1/2 + 4/5 + 2/3) / 3 = 59/90.
    result = classification.compute(predictions=predictions, references=references)
    assert result["accuracy"] == pytest.approx(4 / 6)
    assert result["macro_f1"] == pytest.approx(59 / 90)
    # A class missing from both lists counts as F1 = 0 only when named in `labels`.
    with_absent = classification.compute(predictions=predictions, references=references, labels=[0, 1, 2, 3])
    assert with_absent["macro_f1"] == pytest.approx(59 / 120)


def test_perfect_classification(classification):
    result = classification.compute(predictions=[3, 1, 4], references=[3, 1, 4])
    assert result == {"accuracy": 1.0, "macro_f1": 1.0}


HYPOTHESES = [
    "The grace of the Lord Jesus Christ be with you all.",
    "In the beginning God made the heaven and the earth.",
    "Jesus cried.",
]
REFERENCES = [
    "The grace of the Lord Jesus Christ be with all the saints.",
    "In the beginning, God created the heavens and the earth.",
    "Jesus wept.",
]


def test_bleu_and_chrf_equal_sacrebleu(translation):
    result = translation.compute(predictions=HYPOTHESES, references=REFERENCES)
    bleu = sacrebleu.corpus_bleu(HYPOTHESES, [REFERENCES])
    assert result["bleu"] == pytest.approx(bleu.score)
    assert result["chrf"] == pytest.approx(sacrebleu.corpus_chrf(HYPOTHESES, [REFERENCES]).score)
    assert result["bleu_brevity_penalty"] == pytest.approx(bleu.bp)
    assert (result["bleu_sys_len"], result["bleu_ref_len"]) == (bleu.sys_len, bleu.ref_len)
    assert 0 < result["bleu"] < 100


def test_several_references_per_prediction(translation):
    second = ["Grace be with you all.", "In the beginning God created heaven and earth.", "Jesus cried."]
    result = translation.compute(predictions=HYPOTHESES, references=[list(r) for r in zip(REFERENCES, second)])
    assert result["bleu"] == pytest.approx(sacrebleu.corpus_bleu(HYPOTHESES, [REFERENCES, second]).score)
    assert result["chrf"] == pytest.approx(sacrebleu.corpus_chrf(HYPOTHESES, [REFERENCES, second]).score)


def test_perfect_translation_scores_100(translation):
    result = translation.compute(predictions=REFERENCES, references=REFERENCES)
    assert result["bleu"] == pytest.approx(100.0)
    assert result["chrf"] == pytest.approx(100.0)


def test_complement_entropy_of_uniform_wrong_classes_is_log_k_minus_1(complement):
    # K = 5; in every row the four wrong classes share one logit, whatever the gold logit.
    logits = [[3.0, 0.0, 0.0, 0.0, 0.0], [0.5, 0.5, 2.0, 0.5, 0.5], [-1.0, -1.0, -1.0, -1.0, 7.0]]
    result = complement.compute(predictions=logits, references=[0, 2, 4], return_sorted_probabilities=True)
    assert result["complement_entropy"] == pytest.approx(math.log(4), abs=1e-6)
    assert result["normalized_complement_entropy"] == pytest.approx(1.0, abs=1e-6)
    # Sorted wrong-class probabilities, by hand: row 0 p_wrong = 1 / (e^3 + 4) each, etc.
    expected = (1 / (math.e**3 + 4) + 1 / (math.exp(1.5) + 4) + 1 / (math.e**8 + 4)) / 3
    assert result["sorted_wrong_class_probabilities"] == pytest.approx([expected] * 4, abs=1e-6)


def test_complement_entropy_by_hand(complement):
    # Row A: exp(logits) = [2, 1, 3], gold 0 -> q = (1/4, 3/4), p_wrong sorted = (1/2, 1/6).
    # Row B: exp(logits) = [1, 4, 1], gold 1 -> q = (1/2, 1/2), p_wrong sorted = (1/6, 1/6).
    # Row C is ignored (label -100).
    logits = [[math.log(2), 0.0, math.log(3)], [0.0, math.log(4), 0.0], [9.0, 0.0, 0.0]]
    result = complement.compute(predictions=logits, references=[0, 1, -100], return_sorted_probabilities=True)
    h_a = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    h_b = math.log(2)
    assert result["complement_entropy"] == pytest.approx((h_a + h_b) / 2, abs=1e-6)
    assert result["normalized_complement_entropy"] == pytest.approx((h_a + h_b) / 2 / math.log(2), abs=1e-6)
    assert result["sorted_wrong_class_probabilities"] == pytest.approx([1 / 3, 1 / 6], abs=1e-6)
    assert "sorted_wrong_class_probabilities" not in complement.compute(predictions=logits, references=[0, 1, 2])


def test_complement_entropy_of_a_peaked_complement_is_near_zero(complement):
    result = complement.compute(predictions=[[0.0, 30.0, 0.0, 0.0]], references=[0])
    assert result["complement_entropy"] == pytest.approx(0.0, abs=1e-6)
