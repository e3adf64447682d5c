"""Load the committed Spanish-English Bible corpus (``data/bible_es_en.jsonl.gz``) as a ``datasets.DatasetDict``.

Why a committed file: building it needs Debian packages (``diatheke``, ``sword-text-web``, ``sword-text-sparv``)
and a few minutes of ``diatheke`` calls; the result is a few MB, public domain, and makes the translation example
and its tests independent of apt. ``build_bible_corpus.py`` rebuilds it; ``data/README.md`` says how and what.

Usage::

    from bible_data import load_bible_splits
    splits = load_bible_splits()
    splits["train"][0]["translation"]        # {"es": "En el principio crió Dios ...", "en": "In the beginning, ..."}

Splits are by book (validation: Ecclesiastes, Acts, Hebrews; test: Ruth, Lamentations, John, Romans), so
evaluation verses come from books the model never saw.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

DEFAULT_PATH = Path(__file__).resolve().parent / "data" / "bible_es_en.jsonl.gz"
SPLITS = ("train", "validation", "test")


def load_bible_splits(path: str | Path | None = None):
    """``DatasetDict`` with ``train`` / ``validation`` / ``test``; columns ``id``, ``book``, ``chapter``, ``verse``,
    ``translation`` (``{"es": str, "en": str}``), the form ``transformers``' translation examples expect.

    The file is read with the standard library (a few MB) rather than ``load_dataset("json")``, so nothing is
    written to the ``datasets`` cache and row order is the file's (canonical book order).
    """
    import datasets

    path = Path(path) if path is not None else DEFAULT_PATH
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: it is committed with the repository; rebuild it with "
            "`python examples/translation/build_bible_corpus.py` after "
            "`apt-get install diatheke sword-text-web sword-text-sparv`"
        )
    columns: dict[str, dict[str, list]] = {
        s: {"id": [], "book": [], "chapter": [], "verse": [], "translation": []} for s in SPLITS
    }
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            split = record["split"]
            if split not in columns:
                raise ValueError(f"unknown split {split!r} for {record.get('id')} in {path}")
            for key, values in columns[split].items():
                values.append(record[key])
    features = datasets.Features(
        {
            "id": datasets.Value("string"),
            "book": datasets.Value("string"),
            "chapter": datasets.Value("int32"),
            "verse": datasets.Value("int32"),
            "translation": datasets.Translation(languages=["en", "es"]),
        }
    )
    return datasets.DatasetDict(
        {split: datasets.Dataset.from_dict(columns[split], features=features) for split in SPLITS}
    )
