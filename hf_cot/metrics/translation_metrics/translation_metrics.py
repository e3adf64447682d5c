"""Corpus BLEU and chrF from sacreBLEU in one ``evaluate`` module.

Why sacreBLEU: its scores are comparable across papers (standard tokenisation, ``13a`` by default) and it works
offline. chrF is reported next to BLEU because it is more informative at the low scores a small warm-started model
reaches, and less sensitive to the archaic spelling variation of the Bible corpus.
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
    references (`list` of `str` or `list` of `list` of `str`): one reference per prediction, or several; every
        prediction must have the same number of references.
    lowercase (`bool`, default False): lowercase before BLEU (for uncased models).
    tokenize (`str`, optional): sacreBLEU tokenizer for BLEU (default ``"13a"``).
Returns:
    bleu (`float`): corpus BLEU, 0-100.
    chrf (`float`): corpus chrF, 0-100.
    bleu_brevity_penalty (`float`), bleu_sys_len (`int`), bleu_ref_len (`int`): the usual BLEU diagnostics.
Examples:
    >>> metric = hf_cot.metrics.load("translation_metrics")
    >>> metric.compute(predictions=["Grace be with you all."], references=["Grace be with you all."])["bleu"]
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

    def _compute(self, predictions, references, lowercase=False, tokenize=None):
        if references and isinstance(references[0], str):
            references = [[ref] for ref in references]
        counts = {len(refs) for refs in references}
        if len(counts) > 1:
            raise ValueError("every prediction needs the same number of references")
        # sacreBLEU wants one stream per reference position: transpose [N][R] -> [R][N].
        streams = [list(stream) for stream in zip(*references)]
        bleu_kwargs = {"lowercase": lowercase}
        if tokenize is not None:
            bleu_kwargs["tokenize"] = tokenize
        bleu = sacrebleu.corpus_bleu(predictions, streams, **bleu_kwargs)
        chrf = sacrebleu.corpus_chrf(predictions, streams)
        return {
            "bleu": float(bleu.score),
            "chrf": float(chrf.score),
            "bleu_brevity_penalty": float(bleu.bp),
            "bleu_sys_len": int(bleu.sys_len),
            "bleu_ref_len": int(bleu.ref_len),
        }
