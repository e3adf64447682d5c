"""The local ``evaluate`` metric modules in ``hf_cot/metrics``: values checked against hand computations and
against the libraries called directly, and loading checked to work offline from a fresh modules cache."""

import math
import os
import subprocess
import sys

import numpy as np
import pytest

evaluate = pytest.importorskip("evaluate")
sacrebleu = pytest.importorskip("sacrebleu")
sklearn_metrics = pytest.importorskip("sklearn.metrics")

from hf_cot import metrics  # noqa: E402
from hf_cot.metrics.__main__ import main as cli_main  # noqa: E402


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


@pytest.mark.slow  # a fresh interpreter
def test_lazy_import_and_offline_load_from_an_empty_modules_cache(tmp_path):
    # One subprocess for both checks (importing torch/transformers dominates its cost): `import hf_cot` must not
    # import evaluate, and loading by path must work offline with nothing cached.
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        HF_EVALUATE_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        HF_MODULES_CACHE=str(tmp_path / "modules"),
        HF_HOME=str(tmp_path / "hf"),
    )
    code = (
        "import sys, hf_cot, hf_cot.metrics\n"
        "assert 'evaluate' not in sys.modules, 'import hf_cot imported evaluate'\n"
        "from hf_cot import metrics\n"
        "print(metrics.load('classification_metrics').compute(predictions=[1, 0], references=[1, 1])['accuracy'])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=False, env=env, capture_output=True, text=True, timeout=300
    )
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


def test_balanced_accuracy_and_per_class_recall_by_hand(classification):
    """per_class=True (issue #34: imbalanced data): the mean recall over the references' classes and each recall."""
    references = [0, 0, 0, 0, 1, 1, 2]
    predictions = [0, 0, 0, 1, 1, 2, 0]
    # recall: class 0 3/4, class 1 1/2, class 2 0/1 -> balanced accuracy (3/4 + 1/2 + 0) / 3 = 5/12; accuracy 4/7.
    result = classification.compute(predictions=predictions, references=references, per_class=True)
    assert result["accuracy"] == pytest.approx(4 / 7)
    assert result["balanced_accuracy"] == pytest.approx(5 / 12)
    assert {k: v for k, v in result.items() if k.startswith("recall_")} == pytest.approx(
        {"recall_0": 3 / 4, "recall_1": 1 / 2, "recall_2": 0.0}
    )
    assert result["balanced_accuracy"] == pytest.approx(
        sklearn_metrics.balanced_accuracy_score(references, predictions)
    )
    # `labels` names the recall keys; a class absent from the references has recall 0 (and no balanced-accuracy vote).
    named = classification.compute(predictions=predictions, references=references, labels=[0, 1, 2, 3], per_class=True)
    assert named["recall_3"] == 0.0 and named["balanced_accuracy"] == pytest.approx(5 / 12)
    # Off by default: the upstream scripts' calls return what they returned.
    assert set(classification.compute(predictions=predictions, references=references)) == {"accuracy", "macro_f1"}
    with_logits = classification.compute(
        predictions=[0, 1], references=[0, 1], logits=[[2.0, 0.0], [0.0, 2.0]], per_class=True
    )
    assert set(with_logits) == {"accuracy", "macro_f1", "balanced_accuracy", "recall_0", "recall_1", "ece", "nll"}


def test_multilabel_refuses_per_class(tmp_path):
    multilabel = metrics.load("classification_metrics", config_name="multilabel", cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="single-label predictions only"):
        multilabel.compute(predictions=[[1, 0]], references=[[1, 0]], average="micro", per_class=True)


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
    result = translation.compute(
        predictions=HYPOTHESES, references=[list(r) for r in zip(REFERENCES, second, strict=True)]
    )
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


# --- `python -m hf_cot.metrics`: paths for scripts that take a metric name -------------------------------------------


def test_cli_path_is_metric_path_and_loads_offline(tmp_path):
    # The real entry point, as a shell substitution runs it, offline; then the printed path goes through the exact
    # call upstream run_classification.py makes with --metric_name (evaluate.load(name, cache_dir=...)).
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_EVALUATE_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    out = subprocess.run(
        [sys.executable, "-m", "hf_cot.metrics", "path", "classification_metrics"],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    printed = out.stdout.strip()
    assert printed == metrics.metric_path("classification_metrics")
    assert os.path.isabs(printed) and os.path.isfile(os.path.join(printed, "classification_metrics.py"))
    metric = evaluate.load(printed, cache_dir=str(tmp_path / "cache"))
    assert metric.compute(predictions=[2, 1, 0, 0], references=[2, 1, 1, 0])["accuracy"] == pytest.approx(0.75)


def test_cli_list_and_path_in_process(capsys):
    assert cli_main(["list"]) == 0
    assert capsys.readouterr().out.split() == metrics.available()
    for name in metrics.available():
        assert cli_main(["path", name]) == 0
        assert capsys.readouterr().out.strip() == metrics.metric_path(name)


def test_cli_unknown_name_exits_non_zero_naming_the_valid_ones(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["path", "sacrebleu"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "unknown hf_cot metric 'sacrebleu'" in err
    assert all(name in err for name in metrics.available())
    with pytest.raises(SystemExit) as exit_info:
        cli_main([])  # no command
    assert exit_info.value.code == 2


# --- the Hub `sacrebleu` module's input format and `score` key --------------------------------------------------------

SECOND = ["Grace be with you all.", "In the beginning God created heaven and earth.", "Jesus cried."]


def test_list_of_lists_references_score_is_sacrebleu_corpus_bleu(translation):
    # Hub format: references[i] lists the references of prediction i. sacreBLEU itself takes one stream per reference
    # position; the streams are written out literally here, not transposed by code.
    per_prediction = [
        ["The grace of the Lord Jesus Christ be with all the saints.", "Grace be with you all."],
        ["In the beginning, God created the heavens and the earth.", "In the beginning God created heaven and earth."],
        ["Jesus wept.", "Jesus cried."],
    ]
    result = translation.compute(predictions=HYPOTHESES, references=per_prediction)
    expected = sacrebleu.corpus_bleu(HYPOTHESES, [REFERENCES, SECOND]).score
    assert result["score"] == pytest.approx(expected)
    assert result["bleu"] == result["score"]
    assert result["chrf"] == pytest.approx(sacrebleu.corpus_chrf(HYPOTHESES, [REFERENCES, SECOND]).score)
    assert 0 < result["score"] < 100
    # The existing keys stay; list-valued keys (which Trainer.log_metrics cannot format) do not appear.
    assert set(result) == {"bleu", "score", "chrf", "bleu_brevity_penalty", "bleu_sys_len", "bleu_ref_len"}
    # The one-reference-per-prediction string form gives the one-stream score.
    single = translation.compute(predictions=HYPOTHESES, references=REFERENCES)["score"]
    assert single == pytest.approx(sacrebleu.corpus_bleu(HYPOTHESES, [REFERENCES]).score)
    assert single != pytest.approx(expected)


def test_sacrebleu_module_keyword_arguments_pass_through(translation):
    references = [[ref] for ref in REFERENCES]
    for kwargs in (
        {"tokenize": "char"},
        {"lowercase": True},
        {"smooth_method": "floor", "smooth_value": 0.2},
        {"smooth_method": "none"},
        {"use_effective_order": True},
        {"force": True},
    ):
        result = translation.compute(predictions=HYPOTHESES, references=references, **kwargs)
        assert result["score"] == pytest.approx(sacrebleu.corpus_bleu(HYPOTHESES, [REFERENCES], **kwargs).score), (
            kwargs
        )


def test_different_numbers_of_references_per_prediction(translation):
    # The Hub module raises here; sacreBLEU itself supports it when the missing references are None (its
    # variable-reference mode), which is what the module builds. Expectation 1: sacreBLEU on None-padded streams.
    ragged = [
        ["The grace of the Lord Jesus Christ be with all the saints.", "Grace be with you all."],
        ["In the beginning, God created the heavens and the earth."],
        ["Jesus wept.", "Jesus cried.", "Jesus shed tears."],
    ]
    streams = [
        [
            "The grace of the Lord Jesus Christ be with all the saints.",
            "In the beginning, God created the heavens and the earth.",
            "Jesus wept.",
        ],
        ["Grace be with you all.", None, "Jesus cried."],
        [None, None, "Jesus shed tears."],
    ]
    result = translation.compute(predictions=HYPOTHESES, references=ragged)
    assert result["score"] == pytest.approx(sacrebleu.corpus_bleu(HYPOTHESES, streams).score)
    assert result["chrf"] == pytest.approx(sacrebleu.corpus_chrf(HYPOTHESES, streams).score)
    # Expectation 2, without None: repeating a reference changes neither the clipped n-gram counts (max over
    # references) nor the closest reference length, so padding each short list with copies of its own first
    # reference is an equal-count input with the same BLEU.
    repeated = [refs + [refs[0]] * (3 - len(refs)) for refs in ragged]
    assert result["score"] == pytest.approx(translation.compute(predictions=HYPOTHESES, references=repeated)["score"])
    # Explicit None entries (sacreBLEU's own convention) mean the same as leaving the reference out.
    explicit = [refs + [None] * (3 - len(refs)) for refs in ragged]
    assert translation.compute(predictions=HYPOTHESES, references=explicit)["score"] == pytest.approx(result["score"])


@pytest.mark.parametrize("missing", [[], [None]])
def test_a_prediction_without_references_is_a_clear_error(translation, missing):
    references = [["The grace of the Lord Jesus Christ be with all the saints."], missing, ["Jesus wept."]]
    with pytest.raises(ValueError, match=r"position\(s\) \[1\] have no reference .*at least one reference"):
        translation.compute(predictions=HYPOTHESES, references=references)


def test_more_reference_lists_than_predictions_is_an_error(translation):
    with pytest.raises(ValueError, match="Mismatch in the number of predictions"):
        translation.compute(predictions=HYPOTHESES[:2], references=[[ref] for ref in REFERENCES])


# --- classification: `average` and the `multilabel` config ------------------------------------------------------------


def test_average_names_the_f1_key(classification):
    references, predictions = [0, 0, 1, 1, 2, 2, 2], [0, 1, 1, 1, 2, 0, 2]
    for average in ("macro", "micro", "weighted"):
        result = classification.compute(predictions=predictions, references=references, average=average)
        assert set(result) == {"accuracy", f"{average}_f1"}
        assert result[f"{average}_f1"] == pytest.approx(
            sklearn_metrics.f1_score(references, predictions, average=average)
        )
    with pytest.raises(ValueError, match="average='binary' is not supported; use one of"):
        classification.compute(predictions=predictions, references=references, average="binary")


def test_unknown_config_name_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no config 'multiclass'; use one of \\['default', 'multilabel'\\]"):
        metrics.load("classification_metrics", config_name="multiclass", cache_dir=str(tmp_path))


def test_multilabel_by_hand(tmp_path):
    multilabel = metrics.load("classification_metrics", config_name="multilabel", cache_dir=str(tmp_path))
    # Rows: [1,0,1] vs [1,0,0] wrong (one false positive), [0,1,0] vs [0,1,0] right -> subset accuracy 1/2.
    # Micro counts over all cells: TP 2, FP 1, FN 0 -> P 2/3, R 1, F1 4/5.
    result = multilabel.compute(predictions=[[1, 0, 1], [0, 1, 0]], references=[[1, 0, 0], [0, 1, 0]], average="micro")
    assert result == pytest.approx({"accuracy": 0.5, "micro_f1": 0.8})


# --- classification: calibration (ECE, NLL) from logits or probabilities ----------------------------------------------


def naive_ece(probabilities, references, n_bins=15):
    """Expected calibration error written out: bin b holds the examples whose top probability c has
    b / n_bins < c <= (b + 1) / n_bins; sum over bins of |bin| / N * |accuracy - mean confidence|."""
    total = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        members = []
        for row, gold in zip(probabilities, references, strict=True):
            confidence = max(row)
            if lo < confidence <= hi:
                members.append((confidence, list(row).index(confidence) == gold))
        if members:
            accuracy = sum(right for _, right in members) / len(members)
            confidence = sum(c for c, _ in members) / len(members)
            total += len(members) / len(references) * abs(accuracy - confidence)
    return total


def naive_softmax(row):
    exps = [math.exp(x - max(row)) for x in row]
    return [e / sum(exps) for e in exps]


def test_ece_and_nll_by_hand(classification):
    probabilities = [[0.95, 0.05], [0.3, 0.7], [0.2, 0.8], [0.78, 0.22]]
    references = [0, 0, 1, 1]
    # Confidences 0.95 (right), 0.7 (wrong), 0.8 (right), 0.78 (wrong). With 15 bins of width 1/15: 0.95 in
    # (14/15, 1], 0.7 in (10/15, 11/15], and 0.8 = 12/15 closes the bin (11/15, 12/15] that 0.78 is in too.
    # ECE = 1/4 |1 - 0.95| + 1/4 |0 - 0.7| + 2/4 |1/2 - 0.79| = 0.0125 + 0.175 + 0.145 = 0.3325.
    # NLL = -(log 0.95 + log 0.3 + log 0.8 + log 0.22) / 4.
    result = classification.compute(predictions=[0, 1, 1, 0], references=references, probabilities=probabilities)
    assert result["accuracy"] == pytest.approx(0.5)
    assert result["ece"] == pytest.approx(0.3325)
    assert result["nll"] == pytest.approx(-(math.log(0.95) + math.log(0.3) + math.log(0.8) + math.log(0.22)) / 4)
    assert result["ece"] == pytest.approx(naive_ece(probabilities, references))
    # Logits whose softmax is those probabilities give the same numbers (to float rounding).
    logits = np.log(np.array(probabilities)) + 3.0
    from_logits = classification.compute(predictions=[0, 1, 1, 0], references=references, logits=logits)
    assert from_logits["ece"] == pytest.approx(0.3325) and from_logits["nll"] == pytest.approx(result["nll"])
    # One bin: |accuracy - mean confidence| = |1/2 - (0.95 + 0.7 + 0.8 + 0.78) / 4|.
    one_bin = classification.compute(predictions=[0, 1, 1, 0], references=references, probabilities=probabilities,
                                     n_bins=1)  # fmt: skip
    assert one_bin["ece"] == pytest.approx(abs(0.5 - 3.23 / 4))


@pytest.mark.parametrize("seed, k, n_bins", [(0, 3, 15), (1, 5, 15), (2, 10, 10), (3, 2, 4)])
def test_ece_and_nll_against_naive_references(classification, seed, k, n_bins):
    import torch

    rng = np.random.default_rng(seed)
    logits = (rng.normal(size=(60, k)) * rng.uniform(0.5, 4.0)).astype(np.float32)  # what Trainer hands over
    references = rng.integers(0, k, size=60)
    result = classification.compute(
        predictions=logits.argmax(axis=1), references=references, logits=logits, n_bins=n_bins
    )
    probabilities = [naive_softmax([float(x) for x in row]) for row in logits]
    assert result["ece"] == pytest.approx(naive_ece(probabilities, references, n_bins), abs=1e-9)
    nll = torch.nn.functional.cross_entropy(torch.from_numpy(logits).double(), torch.from_numpy(references))
    assert result["nll"] == pytest.approx(nll.item(), rel=1e-9)
    assert 0 < result["ece"] < 1
    # The same through probabilities= (float32 softmax rows: sums within 1e-6 of 1).
    probs32 = torch.softmax(torch.from_numpy(logits), dim=-1).numpy()
    again = classification.compute(
        predictions=logits.argmax(axis=1), references=references, probabilities=probs32, n_bins=n_bins
    )
    assert again["ece"] == pytest.approx(result["ece"], abs=1e-6) and again["nll"] == pytest.approx(
        result["nll"], abs=1e-5
    )


def test_calibration_edge_cases(classification):
    # A confident, right model: confidence 1 sits in the last bin; ECE 0, NLL 0.
    perfect = classification.compute(predictions=[0, 1], references=[0, 1], probabilities=[[1.0, 0.0], [0.0, 1.0]])
    assert perfect["ece"] == 0.0 and perfect["nll"] == pytest.approx(0.0)
    # A zero probability on the gold class: NLL clipped at -log(float64 eps), not infinite.
    wrong = classification.compute(predictions=[0], references=[1], probabilities=[[1.0, 0.0]])
    assert wrong["ece"] == pytest.approx(1.0) and wrong["nll"] == pytest.approx(-math.log(np.finfo(np.float64).eps))
    # The inputs of before keep returning exactly what they returned.
    assert set(classification.compute(predictions=[0, 1], references=[0, 0])) == {"accuracy", "macro_f1"}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"logits": [[0.0, 1.0]] * 3, "probabilities": [[0.5, 0.5]] * 3}, "not both"),
        ({"logits": [[0.0, 1.0]] * 2}, r"shape \[N, K\] with N = 3"),
        ({"logits": [0.0, 1.0, 2.0]}, "shape"),
        ({"probabilities": [[2.0, 1.0]] * 3}, "pass scores as logits="),
        ({"probabilities": [[1.2, -0.2]] * 3}, "non-negative"),
        ({"logits": [[0.0, float("nan")]] * 3}, "NaN"),
        ({"logits": [[0.0, 1.0]] * 3, "n_bins": 0}, "n_bins"),
        ({"logits": [[0.0, 1.0, 0.0]] * 3, "references": [0, 1, 3]}, r"class ids in \[0, 3\)"),
    ],
)
def test_calibration_input_errors(classification, kwargs, message):
    kwargs = {"predictions": [0, 1, 1], "references": [0, 1, 1], **kwargs}
    with pytest.raises(ValueError, match=message):
        classification.compute(**kwargs)


def test_multilabel_refuses_calibration(tmp_path):
    multilabel = metrics.load("classification_metrics", config_name="multilabel", cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="single-label predictions only"):
        multilabel.compute(predictions=[[1, 0]], references=[[1, 0]], average="micro", logits=[[2.0, -2.0]])


def test_the_classification_example_with_logits_passed_on(tmp_path):
    """examples/text-classification/run_classification.py's compute_metrics with `logits=logits` added to its
    classification.compute call: eval_ece / eval_nll come out of Trainer.evaluate (prefix added by the Trainer)."""
    from transformers import EvalPrediction

    classification = metrics.load("classification_metrics", cache_dir=str(tmp_path))
    num_labels = 4

    def compute_metrics(eval_pred):  # the example's function with the one change
        logits = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
        labels = eval_pred.label_ids
        return classification.compute(
            predictions=np.argmax(logits, axis=-1), references=labels, labels=list(range(num_labels)), logits=logits
        )

    rng = np.random.default_rng(4)
    logits = rng.normal(size=(32, num_labels)).astype(np.float32)
    labels = rng.integers(0, num_labels, size=32)
    result = compute_metrics(EvalPrediction(predictions=(logits, np.zeros((32, 2))), label_ids=labels))
    assert set(result) == {"accuracy", "macro_f1", "ece", "nll"}
    assert result["ece"] == pytest.approx(naive_ece([naive_softmax(r.tolist()) for r in logits], labels), abs=1e-9)


# --- the upstream transformers example scripts, with only the metric name changed -------------------------------------


def test_upstream_run_translation_compute_metrics(tmp_path):
    # The one-line change to run_translation.py: its `evaluate.load("sacrebleu", cache_dir=model_args.cache_dir)`
    # becomes this call (cache_dir=None when --cache_dir is not given, so both are tried).
    for cache_dir in (None, str(tmp_path)):
        metric = evaluate.load(metrics.metric_path("translation_metrics"), cache_dir=cache_dir)

    # From huggingface/transformers examples/pytorch/translation/run_translation.py (commit c73b666), with the
    # tokenizer decoding replaced by already-decoded strings:
    def postprocess_text(preds, labels):
        preds = [pred.strip() for pred in preds]
        labels = [[label.strip()] for label in labels]

        return preds, labels

    decoded_preds = [f" {h} " for h in HYPOTHESES]  # decoded text keeps stray spaces; postprocess_text strips them
    decoded_labels = [f"{r}\n" for r in REFERENCES]
    decoded_preds, decoded_labels = postprocess_text(decoded_preds, decoded_labels)
    result = metric.compute(predictions=decoded_preds, references=decoded_labels)
    result = {"bleu": result["score"]}
    result = {k: round(v, 4) for k, v in result.items()}
    # (end of the upstream lines)

    assert result == {"bleu": round(sacrebleu.corpus_bleu(HYPOTHESES, [REFERENCES]).score, 4)}
    assert 0 < result["bleu"] < 100


def _upstream_classification_metric_and_compute_metrics(metric_name, cache_dir, is_multi_label, is_regression=False):
    # From huggingface/transformers examples/pytorch/text-classification/run_classification.py (commit e39c9f7),
    # `data_args.metric_name` / `model_args.cache_dir` replaced by the arguments:
    metric = (
        evaluate.load(metric_name, config_name="multilabel", cache_dir=cache_dir)
        if is_multi_label
        else evaluate.load(metric_name, cache_dir=cache_dir)
    )

    def compute_metrics(p):
        preds = p.predictions[0] if isinstance(p.predictions, tuple) else p.predictions
        if is_regression:
            preds = np.squeeze(preds)
            result = metric.compute(predictions=preds, references=p.label_ids)
        elif is_multi_label:
            preds = np.array([np.where(p > 0, 1, 0) for p in preds])  # convert logits to multi-hot encoding
            # Micro F1 is commonly used in multi-label classification
            result = metric.compute(predictions=preds, references=p.label_ids, average="micro")
        else:
            preds = np.argmax(preds, axis=1)
            result = metric.compute(predictions=preds, references=p.label_ids)
        if len(result) > 1:
            result["combined_score"] = np.mean(list(result.values())).item()
        return result

    return compute_metrics  # (end of the upstream lines)


@pytest.mark.parametrize("cache_dir", [None, "tmp"])
def test_upstream_run_classification_single_label(tmp_path, cache_dir):
    from transformers import EvalPrediction

    cache_dir = str(tmp_path) if cache_dir == "tmp" else None
    compute_metrics = _upstream_classification_metric_and_compute_metrics(
        metrics.metric_path("classification_metrics"), cache_dir, is_multi_label=False
    )
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(40, 5)).astype(np.float32)  # what Trainer hands compute_metrics
    label_ids = rng.integers(0, 5, size=40)
    # Trainer passes the logits as a tuple when the model returns extra outputs: both forms.
    for predictions in (logits, (logits, np.zeros((40, 3), dtype=np.float32))):
        result = compute_metrics(EvalPrediction(predictions=predictions, label_ids=label_ids))
        preds = logits.argmax(axis=1)
        accuracy = sklearn_metrics.accuracy_score(label_ids, preds)
        macro_f1 = sklearn_metrics.f1_score(label_ids, preds, average="macro")
        assert set(result) == {"accuracy", "macro_f1", "combined_score"}
        assert result["accuracy"] == pytest.approx(accuracy)
        assert result["macro_f1"] == pytest.approx(macro_f1)
        assert result["combined_score"] == pytest.approx((accuracy + macro_f1) / 2)
        assert 0 < accuracy < 1  # random logits: the check is not trivially 0 or 1


def test_upstream_run_classification_multi_label(tmp_path):
    from transformers import EvalPrediction

    compute_metrics = _upstream_classification_metric_and_compute_metrics(
        metrics.metric_path("classification_metrics"), str(tmp_path), is_multi_label=True
    )
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(30, 4)).astype(np.float32)
    # Upstream stores multi-hot labels as floats (multi_labels_to_ids: "BCELoss requires float as target type").
    label_ids = (rng.random(size=(30, 4)) < 0.4).astype(np.float32)
    result = compute_metrics(EvalPrediction(predictions=logits, label_ids=label_ids))
    preds, refs = (logits > 0).astype(int), label_ids.astype(int)
    accuracy = sklearn_metrics.accuracy_score(refs, preds)  # exact-match ratio on indicator rows
    micro_f1 = sklearn_metrics.f1_score(refs, preds, average="micro")
    assert set(result) == {"accuracy", "micro_f1", "combined_score"}
    assert result["accuracy"] == pytest.approx(accuracy)
    assert result["micro_f1"] == pytest.approx(micro_f1)
    assert result["combined_score"] == pytest.approx((accuracy + micro_f1) / 2)
    assert 0 < micro_f1 < 1
