"""Accuracy and macro-averaged F1 in one ``evaluate`` module (scikit-learn does the counting).

Why one module for both: the classification example reports both after every evaluation, and a single
``compute`` call keeps ``compute_metrics`` to one line. Macro-F1 is reported next to accuracy because BBC News is
not balanced (386 to 511 articles per class): macro-F1 weights every class equally.

Why a ``multilabel`` config: the upstream ``run_classification.py`` (transformers ``examples/pytorch/
text-classification``) loads ``--metric_name`` with ``evaluate.load(name, cache_dir=...)`` for single-label data but
with ``config_name="multilabel"`` and ``compute(..., average="micro")`` on multi-hot rows for multi-label data, so
passing this module's path as ``--metric_name`` works offline for both.
"""

import datasets
import evaluate
from sklearn.metrics import accuracy_score, f1_score

_DESCRIPTION = """
Accuracy (fraction of predictions equal to the reference) and macro-F1 (unweighted mean over classes of the
per-class F1 = 2 * precision * recall / (precision + recall); a class with no true or predicted example scores 0).
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
Returns:
    accuracy (`float`): in [0, 1]; for multilabel, the fraction of examples whose whole row is right.
    macro_f1 (`float`): in [0, 1] (``micro_f1`` / ``weighted_f1`` / ``samples_f1`` with that ``average``).
Examples:
    >>> metric = hf_cot.metrics.load("classification_metrics")
    >>> metric.compute(predictions=[0, 1, 1, 2], references=[0, 1, 2, 2])
    {'accuracy': 0.75, 'macro_f1': 0.7777777777777777}
    >>> multilabel = hf_cot.metrics.load("classification_metrics", config_name="multilabel")
    >>> multilabel.compute(predictions=[[1, 0, 1], [0, 1, 0]], references=[[1, 0, 0], [0, 1, 0]], average="micro")
    {'accuracy': 0.5, 'micro_f1': 0.8}
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
"""


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

    def _compute(self, predictions, references, labels=None, average="macro"):
        if average not in AVERAGES[self.config_name]:
            raise ValueError(
                f"classification_metrics ({self.config_name}): average={average!r} is not supported; use one of "
                f"{list(AVERAGES[self.config_name])} (the F1 is returned as '<average>_f1')"
            )
        return {
            "accuracy": float(accuracy_score(references, predictions)),
            f"{average}_f1": float(f1_score(references, predictions, labels=labels, average=average, zero_division=0)),
        }
