"""Local ``evaluate`` metric modules shipped inside the package, loaded by path so nothing is ever downloaded.

``evaluate.load("accuracy")`` resolves a *name* on the Hugging Face Hub, which fails offline (evaluate 0.4.6 tries
``./accuracy/accuracy.py`` and then the network). A *path* to a folder holding ``<folder>/<folder>.py`` is loaded
from disk instead (evaluate copies the script into its modules cache, ``HF_MODULES_CACHE``, and imports it), and
works with ``HF_HUB_OFFLINE=1`` / ``HF_EVALUATE_OFFLINE=1``. The scripts are package data (see ``pyproject.toml``),
so ``pip install hf-cot`` users get them too.

Usage::

    from hf_cot import metrics
    clf = metrics.load("classification_metrics")           # accuracy + macro-F1
    clf.compute(predictions=[0, 1, 1], references=[0, 1, 0])
    mt = metrics.load("translation_metrics")               # sacreBLEU corpus BLEU + chrF
    ce = metrics.load("complement_entropy")                # mean complement entropy of [N, K] logits

The upstream transformers example scripts take these paths in place of Hub names (see ``python -m
hf_cot.metrics --help``): ``run_classification.py --metric_name "$(python -m hf_cot.metrics path
classification_metrics)"``, and ``run_translation.py`` with its ``evaluate.load("sacrebleu", ...)`` changed to
``evaluate.load(hf_cot.metrics.metric_path("translation_metrics"), ...)`` (same inputs, same ``score`` key).

``evaluate`` (and the metric's own dependencies: scikit-learn, sacrebleu) are optional: they come with
``pip install hf-cot[examples]``. ``evaluate`` is imported only when :func:`load` is called, never at
``import hf_cot``.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["METRICS_DIR", "available", "load", "metric_path"]

METRICS_DIR = Path(__file__).resolve().parent


def available() -> list[str]:
    """Names of the metric modules shipped here (folders holding a same-named script)."""
    return sorted(p.name for p in METRICS_DIR.iterdir() if p.is_dir() and (p / f"{p.name}.py").is_file())


def metric_path(name: str) -> str:
    """Absolute path of the folder of metric ``name``, the form ``evaluate.load`` treats as local."""
    folder = METRICS_DIR / name
    if not (folder / f"{name}.py").is_file():
        raise ValueError(
            f"unknown hf_cot metric {name!r}; available: {', '.join(available())} "
            "(`python -m hf_cot.metrics list` prints them)"
        )
    return str(folder)


def load(name: str, **kwargs):
    """``evaluate.load`` of the local metric module ``name`` (keyword arguments are passed through)."""
    path = metric_path(name)
    try:
        import evaluate
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "hf_cot.metrics needs the `evaluate` package (and scikit-learn / sacrebleu for the metrics): "
            "pip install hf-cot[examples]"
        ) from err
    return evaluate.load(path, **kwargs)
