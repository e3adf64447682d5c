"""Corpus BLEU and chrF from sacreBLEU in one ``evaluate`` module, and a drop-in for ``evaluate.load("sacrebleu")``.

Why sacreBLEU: its scores are comparable across papers (standard tokenisation, ``13a`` by default) and it works
offline. chrF is reported next to BLEU because it is more informative at the low scores a small warm-started model
reaches, and less sensitive to the archaic spelling variation of the Bible corpus.

Why a drop-in: the upstream ``run_translation.py`` (transformers ``examples/pytorch/translation``) loads the Hub's
``sacrebleu`` module, which needs the network. This module takes the same inputs (``references`` as one list of
strings per prediction) and keyword arguments, and returns that module's ``score``, so the upstream script runs
offline with only its metric name changed to ``hf_cot.metrics.metric_path("translation_metrics")``.
"""

import datasets
import evaluate
import sacrebleu

_DESCRIPTION = """
Corpus-level BLEU (sacreBLEU defaults: 13a tokenisation, exponential smoothing, 4-grams) and chrF (character
6-grams, beta 2), both on a 0-100 scale, computed with ``sacrebleu.corpus_bleu`` / ``sacrebleu.corpus_chrf``.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): system outputs (detokenized).
    references (`list` of `str` or `list` of `list` of `str`): one reference per prediction, or a list of
        references per prediction (the Hub ``sacrebleu`` module's format). The lists may differ in length: the
        shorter ones are padded with ``None``, which sacreBLEU reads as "no reference" (its variable-reference
        mode); ``None`` entries may also be passed directly. Every prediction needs at least one reference.
    lowercase (`bool`, default False): lowercase before BLEU (for uncased models).
    tokenize (`str`, optional): sacreBLEU tokenizer for BLEU (default ``"13a"``).
    smooth_method (`str`, default ``"exp"``), smooth_value (`float`, optional), force (`bool`, default False),
        use_effective_order (`bool`, default False): passed to ``sacrebleu.corpus_bleu``, as the Hub ``sacrebleu``
        module does.
Returns:
    bleu (`float`): corpus BLEU, 0-100.
    score (`float`): the same corpus BLEU, under the key the Hub ``sacrebleu`` module uses.
    chrf (`float`): corpus chrF, 0-100.
    bleu_brevity_penalty (`float`), bleu_sys_len (`int`), bleu_ref_len (`int`): the usual BLEU diagnostics.
    The Hub module's list-valued ``counts`` / ``totals`` / ``precisions`` are left out: ``Trainer.log_metrics``
    cannot format lists.
Examples:
    >>> metric = hf_cot.metrics.load("translation_metrics")
    >>> metric.compute(predictions=["Grace be with you all."], references=["Grace be with you all."])["bleu"]
    100.0
    >>> references = [["Grace be with you all.", "Grace."]]  # the Hub sacrebleu module's format
    >>> round(metric.compute(predictions=["Grace be with you all."], references=references)["score"], 4)
    100.0

    Note: BLEU counts up to 4-grams over the whole corpus, so a corpus with no 4-gram (e.g. a single 3-token
    sentence) scores 0 even when it matches exactly.
"""

_CITATION = """
@inproceedings{post-2018-call,
  title = "A Call for Clarity in Reporting {BLEU} Scores",
  author = "Post, Matt",
  booktitle = "Proceedings of the Third Conference on Machine Translation: Research Papers",
  year = "2018",
  pages = "186--191",
}
"""


def reference_streams(references):
    """Turn per-prediction references ([N][R_i]) into sacreBLEU's per-position streams ([max R_i][N]).

    The Hub ``sacrebleu`` module rejects lists of different lengths; here they are padded with ``None`` instead,
    which sacreBLEU skips (``Metric._cache_references``), so each prediction is scored against exactly its own
    references. A prediction left with no reference at all would crash inside sacreBLEU with a ``TypeError``, so it
    is rejected here with its position.
    """
    per_prediction = [
        [refs] if isinstance(refs, str) else [ref for ref in refs if ref is not None] for refs in references
    ]
    empty = [i for i, refs in enumerate(per_prediction) if not refs]
    if empty:
        raise ValueError(
            f"translation_metrics: prediction(s) at position(s) {empty[:10]} have no reference (an empty list or "
            "only None); give every prediction at least one reference string, or drop those predictions"
        )
    width = max((len(refs) for refs in per_prediction), default=0)
    padded = [refs + [None] * (width - len(refs)) for refs in per_prediction]
    return [list(stream) for stream in zip(*padded, strict=True)]


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class TranslationMetrics(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features(
                    {"predictions": datasets.Value("string"), "references": datasets.List(datasets.Value("string"))}
                ),
                datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
            ],
            reference_urls=["https://github.com/mjpost/sacrebleu"],
        )

    def _compute(
        self,
        predictions,
        references,
        lowercase=False,
        tokenize=None,
        smooth_method="exp",
        smooth_value=None,
        force=False,
        use_effective_order=False,
    ):
        streams = reference_streams(references)
        bleu_kwargs = {
            "lowercase": lowercase,
            "smooth_method": smooth_method,
            "smooth_value": smooth_value,
            "force": force,
            "use_effective_order": use_effective_order,
        }
        if tokenize is not None:
            bleu_kwargs["tokenize"] = tokenize
        bleu = sacrebleu.corpus_bleu(predictions, streams, **bleu_kwargs)
        chrf = sacrebleu.corpus_chrf(predictions, streams)
        return {
            "bleu": float(bleu.score),
            "score": float(bleu.score),
            "chrf": float(chrf.score),
            "bleu_brevity_penalty": float(bleu.bp),
            "bleu_sys_len": int(bleu.sys_len),
            "bleu_ref_len": int(bleu.ref_len),
        }
