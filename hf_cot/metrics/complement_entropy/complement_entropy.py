"""Complement entropy of a classifier's outputs, as an ``evaluate`` module.

Why measure it: COT (Chen et al., ICLR 2019) trains the wrong-class probabilities to be flat. The mean entropy of
the complement distribution ``q_j = p_j / (1 - p_g)`` (``j != g``) on held-out data shows whether that happened,
independently of accuracy: ``log(K - 1)`` nats when the wrong classes are uniform, 0 when one wrong class takes all
the leftover mass. The math is :func:`hf_cot.losses.complement_entropy`, the same function the trainer optimizes.
"""

import datasets
import evaluate
import torch

from hf_cot.losses import complement_entropy, complement_normalizer

_DESCRIPTION = """
Mean complement entropy (nats) over examples, its value divided by log(K - 1) (in [0, 1]; 1 = uniform wrong
classes; for K == 2 the complement has one class, the entropy is always 0 and the divisor is 1), and optionally the
mean of the wrong-class probabilities sorted in decreasing order (the curve COT flattens).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `float`): logits, shape [N, K] (softmax is applied here).
    references (`list` of `int`): gold class ids; ``ignore_index`` entries are skipped.
    ignore_index (`int`, default -100): label value to skip.
    return_sorted_probabilities (`bool`, default False): also return ``sorted_wrong_class_probabilities``, a list
        of K - 1 floats: for each example the softmax probabilities of its K - 1 wrong classes sorted from largest
        to smallest, averaged over examples.
Returns:
    complement_entropy (`float`): mean entropy of q = softmax(logits without the gold class), in nats.
    normalized_complement_entropy (`float`): complement_entropy / log(K - 1).
    sorted_wrong_class_probabilities (`list` of `float`, optional).
Examples:
    >>> metric = hf_cot.metrics.load("complement_entropy")
    >>> metric.compute(predictions=[[5.0, 1.0, 1.0, 1.0]], references=[0])["normalized_complement_entropy"]
    1.0
"""

_CITATION = """
@inproceedings{chen2019complement,
  title={Complement Objective Training},
  author={Chen, Hao-Yun and Wang, Pei-Hsin and Liu, Chun-Hao and Chang, Shih-Chieh and Pan, Jia-Yu and Chen,
          Yu-Ting and Wei, Wei and Juan, Da-Cheng},
  booktitle={International Conference on Learning Representations},
  year={2019}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ComplementEntropy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.List(datasets.Value("float32")), "references": datasets.Value("int64")}
            ),
            reference_urls=["https://arxiv.org/abs/1903.01182"],
        )

    def _compute(self, predictions, references, ignore_index=-100, return_sorted_probabilities=False):
        logits = torch.as_tensor(predictions, dtype=torch.float32)
        labels = torch.as_tensor(references, dtype=torch.long)
        if logits.dim() != 2:
            raise ValueError(f"predictions must be [N, K] logits, got shape {tuple(logits.shape)}")
        num_classes = logits.shape[1]
        with torch.no_grad():
            entropy = float(complement_entropy(logits, labels, ignore_index=ignore_index))
        result = {
            "complement_entropy": entropy,
            "normalized_complement_entropy": entropy / complement_normalizer(num_classes, "log"),
        }
        if return_sorted_probabilities:
            valid = labels != ignore_index
            probs = torch.softmax(logits[valid], dim=-1)
            keep = torch.ones_like(probs, dtype=torch.bool)
            keep[torch.arange(probs.shape[0]), labels[valid]] = False
            wrong = probs[keep].reshape(probs.shape[0], num_classes - 1)
            sorted_wrong = wrong.sort(dim=-1, descending=True).values
            mean = sorted_wrong.mean(dim=0) if probs.shape[0] else torch.zeros(num_classes - 1)
            result["sorted_wrong_class_probabilities"] = [float(x) for x in mean]
        return result
