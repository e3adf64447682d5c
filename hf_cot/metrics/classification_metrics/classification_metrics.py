"""Accuracy and macro-averaged F1 in one ``evaluate`` module (scikit-learn does the counting), plus calibration
(expected calibration error and negative log-likelihood) when the model's probabilities or logits are given.

Why one module for both: the classification example reports both after every evaluation, and a single
``compute`` call keeps ``compute_metrics`` to one line. Macro-F1 is reported next to accuracy because BBC News is
not balanced (386 to 511 articles per class): macro-F1 weights every class equally.

Why a ``multilabel`` config: the upstream ``run_classification.py`` (transformers ``examples/pytorch/
text-classification``) loads ``--metric_name`` with ``evaluate.load(name, cache_dir=...)`` for single-label data but
with ``config_name="multilabel"`` and ``compute(..., average="micro")`` on multi-hot rows for multi-label data, so
passing this module's path as ``--metric_name`` works offline for both.

Why calibration here: COT reshapes exactly the probabilities calibration is about (it flattens the wrong classes), and
label smoothing, the baseline a practitioner tries first, changes them too; accuracy alone cannot tell them apart.
The probabilities are optional keyword arguments (``logits=`` or ``probabilities=``), not features, so the
upstream scripts' calls (class ids only) keep working and return what they returned.
"""

import datasets
import evaluate
import numpy as np
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, recall_score
from sklearn.utils.multiclass import unique_labels

_DESCRIPTION = """
Accuracy (fraction of predictions equal to the reference) and macro-F1 (unweighted mean over classes of the
per-class F1 = 2 * precision * recall / (precision + recall); a class with no true or predicted example scores 0).
Given the model's logits or probabilities, also the expected calibration error (ECE: 15 equal-width bins of the
top-class confidence, the max softmax probability) and the negative log-likelihood of the gold class (NLL). With
``per_class=True``, also the balanced accuracy (mean recall over the classes of the references) and each class's recall.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted class ids; with ``config_name="multilabel"``, one multi-hot row
        (0/1 per class) per example.
    references (`list` of `int`): gold class ids; with ``config_name="multilabel"``, multi-hot rows. Floats 0.0 / 1.0
        are accepted (the upstream script stores them as floats for ``BCEWithLogitsLoss``); they are cast to int,
        so pass hard 0/1 labels, not probabilities (0.5 would become 0).
    labels (`list` of `int`, optional): the classes F1 averages over. Default: those present in
        predictions or references (scikit-learn's default). Pass ``list(range(num_labels))`` to count a class the
        evaluation set lacks as F1 0.
    average (`str`, default ``"macro"``): how per-class F1 is averaged: ``"macro"``, ``"micro"``, ``"weighted"``,
        or (multilabel only) ``"samples"``; the F1 key is named after it.
    logits (array of shape ``[N, K]``, optional): the model's scores (what ``Trainer`` hands ``compute_metrics``);
        softmax gives the probabilities, in float64. Adds ``ece`` and ``nll``. Single-label only.
    probabilities (array of shape ``[N, K]``, optional): class probabilities instead of logits (rows must be
        non-negative and sum to 1 within 1e-3). Pass at most one of ``logits`` / ``probabilities``.
    n_bins (`int`, default 15): the number of confidence bins of the ECE.
    per_class (`bool`, default False): add ``balanced_accuracy`` and ``recall_<label>`` per class (single-label
        only). Off by default so that the upstream scripts' calls return what they returned.
Returns:
    accuracy (`float`): in [0, 1]; for multilabel, the fraction of examples whose whole row is right.
    macro_f1 (`float`): in [0, 1] (``micro_f1`` / ``weighted_f1`` / ``samples_f1`` with that ``average``).
    ece (`float`, with logits or probabilities): expected calibration error in [0, 1], lower is better. The
        confidence of an example is its largest probability and it counts as right when that class (the argmax of the
        probabilities) is the reference. Confidences fall into ``n_bins`` equal-width bins ``((b-1)/n_bins,
        b/n_bins]``, b = 1..n_bins (a confidence of exactly 1 in the last); ECE = sum over bins of
        ``|bin| / N * |accuracy(bin) - mean confidence(bin)|`` (Naeini et al., 2015; Guo et al., 2017).
    nll (`float`, with logits or probabilities): mean over examples of ``-log p(reference)``, in nats, lower is
        better (a zero probability is clipped to float64 machine epsilon, as scikit-learn's ``log_loss`` does).
    balanced_accuracy (`float`, with ``per_class=True``): scikit-learn's ``balanced_accuracy_score``, the mean over
        the classes present in the references of their recall (a class never predicted counts as recall 0).
    recall_<label> (`float`, with ``per_class=True``): the recall of each class of ``labels`` (default: the classes
        in predictions or references), e.g. ``recall_0``; 0 for a class absent from the references.
Examples:
    >>> metric = hf_cot.metrics.load("classification_metrics")
    >>> metric.compute(predictions=[0, 1, 1, 2], references=[0, 1, 2, 2])
    {'accuracy': 0.75, 'macro_f1': 0.7777777777777777}
    >>> multilabel = hf_cot.metrics.load("classification_metrics", config_name="multilabel")
    >>> multilabel.compute(predictions=[[1, 0, 1], [0, 1, 0]], references=[[1, 0, 0], [0, 1, 0]], average="micro")
    {'accuracy': 0.5, 'micro_f1': 0.8}
    >>> metric.compute(predictions=[0, 1], references=[0, 0], probabilities=[[0.9, 0.1], [0.4, 0.6]])
    {'accuracy': 0.5, 'macro_f1': 0.3333333333333333, 'ece': 0.35, 'nll': 0.5108256237659906}
    >>> metric.compute(predictions=[0, 0, 1, 1], references=[0, 0, 0, 1], per_class=True)
    {'accuracy': 0.75, 'macro_f1': 0.7333333333333334, 'balanced_accuracy': 0.8333333333333333,
     'recall_0': 0.6666666666666666, 'recall_1': 1.0}
"""

CONFIGS = ("default", "multilabel")
AVERAGES = {"default": ("macro", "micro", "weighted"), "multilabel": ("macro", "micro", "weighted", "samples")}

_CITATION = """
@article{scikit-learn,
  title={Scikit-learn: Machine Learning in {P}ython},
  author={Pedregosa, F. and others},
  journal={Journal of Machine Learning Research},
  volume={12},
  pages={2825--2830},
  year={2011}
}
@inproceedings{guo2017calibration,
  title={On Calibration of Modern Neural Networks},
  author={Guo, Chuan and Pleiss, Geoff and Sun, Yu and Weinberger, Kilian Q.},
  booktitle={International Conference on Machine Learning (ICML)},
  year={2017}
}
@inproceedings{naeini2015obtaining,
  title={Obtaining Well Calibrated Probabilities Using Bayesian Binning},
  author={Naeini, Mahdi Pakdaman and Cooper, Gregory F. and Hauskrecht, Milos},
  booktitle={AAAI Conference on Artificial Intelligence},
  year={2015}
}
"""

# Tolerance on the row sums of `probabilities=`: float32 softmax rows sum to 1 within ~1e-6; logits passed by mistake
# as probabilities are far off, and would give a meaningless ECE without this check.
_SUM_TOLERANCE = 1e-3


def _probabilities(logits, probabilities, num_examples):
    """[N, K] float64 probabilities from exactly one of logits / probabilities, validated."""
    if logits is not None and probabilities is not None:
        raise ValueError("classification_metrics: pass logits= or probabilities=, not both")
    given, name = (logits, "logits") if logits is not None else (probabilities, "probabilities")
    values = np.asarray(given, dtype=np.float64)
    if values.ndim != 2 or values.shape[0] != num_examples:
        raise ValueError(
            f"classification_metrics: {name} must have shape [N, K] with N = {num_examples} (one row per reference); "
            f"got shape {values.shape}"
        )
    if not np.all(np.isfinite(values)):
        raise ValueError(f"classification_metrics: {name} hold NaN or infinite values")
    if logits is not None:
        shifted = values - values.max(axis=1, keepdims=True)  # the softmax without overflow
        exp = np.exp(shifted)
        return exp / exp.sum(axis=1, keepdims=True)
    sums = values.sum(axis=1)
    if np.any(values < 0) or np.any(np.abs(sums - 1) > _SUM_TOLERANCE):
        raise ValueError(
            "classification_metrics: probabilities must be non-negative with rows summing to 1 (within "
            f"{_SUM_TOLERANCE:g}; found row sums from {sums.min():.4g} to {sums.max():.4g}); pass scores as logits="
        )
    return values


def expected_calibration_error(probabilities, references, n_bins=15):
    """Top-label ECE with ``n_bins`` equal-width confidence bins ``((b-1)/n_bins, b/n_bins]``; empty bins weigh 0."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == references
    # The inner edges b / n_bins as correctly rounded quotients (not linspace's accumulated steps), so a confidence
    # written as a decimal (0.6 = 9/15) lands in the bin a reader computes by hand. digitize with right=True puts c in
    # 0-based bin b when edge[b] < c <= edge[b+1].
    inner_edges = np.arange(1, n_bins) / n_bins
    bins = np.digitize(confidence, inner_edges, right=True)
    ece = 0.0
    for b in range(n_bins):
        in_bin = bins == b
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def negative_log_likelihood(probabilities, references):
    """Mean ``-log p(reference)`` in nats, a zero probability clipped to float64 epsilon."""
    gold = probabilities[np.arange(len(references)), references]
    return float(-np.mean(np.log(np.clip(gold, np.finfo(np.float64).eps, 1.0))))


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ClassificationMetrics(evaluate.Metric):
    def _info(self):
        if self.config_name not in CONFIGS:
            # evaluate.load passes any config_name through; an unknown one would otherwise fail later, at compute,
            # with a feature-format error that does not mention the config.
            raise ValueError(
                f"classification_metrics has no config {self.config_name!r}; use one of {list(CONFIGS)} "
                "(config_name='multilabel' for multi-hot predictions/references)"
            )
        value = datasets.Value("int64")
        column = datasets.List(value) if self.config_name == "multilabel" else value
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": column, "references": column}),
            reference_urls=["https://scikit-learn.org/stable/modules/model_evaluation.html"],
        )

    def _compute(
        self,
        predictions,
        references,
        labels=None,
        average="macro",
        logits=None,
        probabilities=None,
        n_bins=15,
        per_class=False,
    ):
        if average not in AVERAGES[self.config_name]:
            raise ValueError(
                f"classification_metrics ({self.config_name}): average={average!r} is not supported; use one of "
                f"{list(AVERAGES[self.config_name])} (the F1 is returned as '<average>_f1')"
            )
        result = {
            "accuracy": float(accuracy_score(references, predictions)),
            f"{average}_f1": float(f1_score(references, predictions, labels=labels, average=average, zero_division=0)),
        }
        if per_class:
            if self.config_name == "multilabel":
                raise ValueError("classification_metrics (multilabel): per_class is for single-label predictions only")
            # Why: on imbalanced data accuracy hides the rare classes; their recall is what class weights and the
            # complement objective are claimed to improve.
            result["balanced_accuracy"] = float(balanced_accuracy_score(references, predictions))
            classes = list(labels) if labels is not None else unique_labels(references, predictions).tolist()
            recalls = recall_score(references, predictions, labels=classes, average=None, zero_division=0)
            result.update({f"recall_{label}": float(r) for label, r in zip(classes, recalls, strict=True)})
        if logits is None and probabilities is None:
            return result
        if self.config_name == "multilabel":
            raise ValueError(
                "classification_metrics (multilabel): ece/nll are defined here for single-label predictions only; "
                "drop logits=/probabilities="
            )
        if not isinstance(n_bins, int) or isinstance(n_bins, bool) or n_bins < 1:
            raise ValueError(f"classification_metrics: n_bins must be a positive integer, not {n_bins!r}")
        references = np.asarray(references, dtype=np.int64)
        probs = _probabilities(logits, probabilities, len(references))
        if references.size and (references.min() < 0 or references.max() >= probs.shape[1]):
            raise ValueError(
                f"classification_metrics: references must be class ids in [0, {probs.shape[1]}) to score "
                f"{probs.shape[1]} columns of logits/probabilities"
            )
        result["ece"] = expected_calibration_error(probs, references, n_bins)
        result["nll"] = negative_log_likelihood(probs, references)
        return result
