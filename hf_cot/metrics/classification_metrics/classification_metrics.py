"""Accuracy and macro-averaged F1 in one ``evaluate`` module (scikit-learn does the counting).

Why one module for both: the classification example reports both after every evaluation, and a single
``compute`` call keeps ``compute_metrics`` to one line. Macro-F1 is reported next to accuracy because BBC News is
not balanced (386 to 511 articles per class): macro-F1 weights every class equally.
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
    predictions (`list` of `int`): predicted class ids.
    references (`list` of `int`): gold class ids.
    labels (`list` of `int`, optional): the classes macro-F1 averages over. Default: those present in
        predictions or references (scikit-learn's default). Pass ``list(range(num_labels))`` to count a class the
        evaluation set lacks as F1 0.
Returns:
    accuracy (`float`): in [0, 1].
    macro_f1 (`float`): in [0, 1].
Examples:
    >>> metric = hf_cot.metrics.load("classification_metrics")
    >>> metric.compute(predictions=[0, 1, 1, 2], references=[0, 1, 2, 2])
    {'accuracy': 0.75, 'macro_f1': 0.7777777777777777}
"""

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
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
            reference_urls=["https://scikit-learn.org/stable/modules/model_evaluation.html"],
        )

    def _compute(self, predictions, references, labels=None):
        return {
            "accuracy": float(accuracy_score(references, predictions)),
            "macro_f1": float(f1_score(references, predictions, labels=labels, average="macro", zero_division=0)),
        }
