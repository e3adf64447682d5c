"""Build the Spanish-English verse-aligned Bible corpus used by the translation example.

Why a Bible: no sentence-level parallel corpus (Europarl, Tatoeba, IWSLT, ...) is installable offline from PyPI or
Debian, but two public-domain Bibles are, as SWORD modules, and verses are short, sentence-like units that share a
key across languages (see ``docs/offline-assets.md``, "The translation data").

Requirements (this script installs nothing itself)::

    apt-get install diatheke sword-text-web sword-text-sparv

* ``engWEB2015eb``: World English Bible (package ``sword-text-web``), ``DistributionLicense=Public Domain``.
* ``spaRV1909eb``: Reina-Valera 1909 (package ``sword-text-sparv``), ``DistributionLicense=Public Domain``.

Usage::

    python examples/translation/build_bible_corpus.py            # writes examples/translation/data/bible_es_en.jsonl.gz

Each output line is one verse::

    {"id": "John.11.35", "book": "John", "chapter": 11, "verse": 35, "split": "train",
     "translation": {"es": "Y lloró Jesús.", "en": "Jesus wept."}}

How the text is read (the choices that matter for quality, each checked on the real modules):

* One ``diatheke`` call per chapter (``-k "Book C"``). A whole-book or whole-Bible query attaches extra material
  (the WEB glossary, introductions) to the last verse; per chapter only Revelation 22:21 still carries the glossary,
  which :func:`clean_markup` cuts off at its ``<div type="glossary">``.
* Output filter ``-f internal`` (the module's raw OSIS) rather than ``-f plain``. Both modules store neighbouring
  word elements without a space between them (``<w>God</w><w>created</w>``, ``<w>uno</w><transChange>llamado``) and
  ``plain`` renders those as ``Godcreated`` / ``unollamadoLázaro`` (about 600 verses). With the markup still there,
  :func:`clean_markup` puts a space where one element ends and the next begins between two letters, and after
  ``,;.!?`` before a word element. ``plain`` also splits poems over several lines and prints Psalm headings as
  separate lines that cannot be told apart from verse text; in ``internal`` each verse is one line and headings are
  ``<title>`` elements before the verse key. Strong's numbers as ``plain`` prints them (``<G1438>``) are removed
  too, so the functions work on either format.
* Psalm superscriptions: the Spanish text has them inside verse 1; the English module keeps them as a canonical
  ``<title>`` before the verse, and ``diatheke`` repeats that title before every following verse of the chapter.
  :func:`parse_chapter` therefore keeps a heading only on the first verse it precedes (for Psalm 119 that puts
  ALEPH, BETH, ... on verses 1, 9, ..., as in the Spanish). Editorial speaker labels (Song of Songs) are dropped.
* The Reina-Valera prints the first word(s) of every chapter in capitals (``EN el principio``);
  :func:`fix_drop_cap` restores normal case in verse 1 of each Spanish chapter. It also carries the KJV-style
  subscriptions of the epistles (``Amén. Escrita de Roma á los Efesios por Tichîco.``) inside their last verse, which
  the WEB does not have; :func:`strip_subscription` removes them.
* Alignment is by the key (book, chapter, verse). The two modules use different versification schemes (WEB: NRSVA,
  RV1909: KJV), which agree for almost all of the 66 protocanonical books; a verse present on one side only or empty
  on either side is dropped, and so is a pair whose character lengths differ by more than
  ``MAX_LENGTH_RATIO`` (a sign that the two keys hold different text). Only the 66 books both modules share are
  read (the WEB's deuterocanonical books have no Spanish counterpart here).
* The RV1909 module is keyed KJV but its text follows the Spanish (Hebrew) verse division in places: Numbers 13
  and 30, 1 Samuel 24, Hosea 12 and Jonah 2 hold under key ``v`` the English verse ``v - 1``, parts of 1 Kings 22,
  1 Chronicles 21 and 2 Chronicles 33 are off by one, Job 39 by three and Job 40 by five, so a key match alone
  would pair neighbouring verses. :func:`versification_offsets` finds, per chapter, the offset between the two
  numberings: a small Viterbi over offsets that scores each candidate pair by its length ratio and by how many
  of its English words have their usual Spanish translation in it (a word dictionary that
  :func:`learn_associations` learns from the key alignment itself), and pays for every change of offset. Verses
  whose best offset is not 0 are dropped rather than re-paired (about 190 verses), so the corpus only keeps pairs
  whose keys agree. A check with the same dictionary finds about 50 kept verses (0.2%) that fit a neighbouring
  verse better, mostly short verses with few known words or real differences between the textual traditions
  (e.g. Matthew 23:13-14 are swapped); they stay.

Splits are assigned by *book* so that validation and test verses come from books never seen in training; see
:data:`VALIDATION_BOOKS` / :data:`TEST_BOOKS` for the rule.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ES_MODULE = "spaRV1909eb"
EN_MODULE = "engWEB2015eb"
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "data" / "bible_es_en.jsonl.gz"

# (OSIS id, English name as diatheke accepts it, number of chapters) for the 66 books both modules contain.
BOOKS: tuple[tuple[str, str, int], ...] = (
    ("Gen", "Genesis", 50),
    ("Exod", "Exodus", 40),
    ("Lev", "Leviticus", 27),
    ("Num", "Numbers", 36),
    ("Deut", "Deuteronomy", 34),
    ("Josh", "Joshua", 24),
    ("Judg", "Judges", 21),
    ("Ruth", "Ruth", 4),
    ("1Sam", "1 Samuel", 31),
    ("2Sam", "2 Samuel", 24),
    ("1Kgs", "1 Kings", 22),
    ("2Kgs", "2 Kings", 25),
    ("1Chr", "1 Chronicles", 29),
    ("2Chr", "2 Chronicles", 36),
    ("Ezra", "Ezra", 10),
    ("Neh", "Nehemiah", 13),
    ("Esth", "Esther", 10),
    ("Job", "Job", 42),
    ("Ps", "Psalms", 150),
    ("Prov", "Proverbs", 31),
    ("Eccl", "Ecclesiastes", 12),
    ("Song", "Song of Solomon", 8),
    ("Isa", "Isaiah", 66),
    ("Jer", "Jeremiah", 52),
    ("Lam", "Lamentations", 5),
    ("Ezek", "Ezekiel", 48),
    ("Dan", "Daniel", 12),
    ("Hos", "Hosea", 14),
    ("Joel", "Joel", 3),
    ("Amos", "Amos", 9),
    ("Obad", "Obadiah", 1),
    ("Jonah", "Jonah", 4),
    ("Mic", "Micah", 7),
    ("Nah", "Nahum", 3),
    ("Hab", "Habakkuk", 3),
    ("Zeph", "Zephaniah", 3),
    ("Hag", "Haggai", 2),
    ("Zech", "Zechariah", 14),
    ("Mal", "Malachi", 4),
    ("Matt", "Matthew", 28),
    ("Mark", "Mark", 16),
    ("Luke", "Luke", 24),
    ("John", "John", 21),
    ("Acts", "Acts", 28),
    ("Rom", "Romans", 16),
    ("1Cor", "1 Corinthians", 16),
    ("2Cor", "2 Corinthians", 13),
    ("Gal", "Galatians", 6),
    ("Eph", "Ephesians", 6),
    ("Phil", "Philippians", 4),
    ("Col", "Colossians", 4),
    ("1Thess", "1 Thessalonians", 5),
    ("2Thess", "2 Thessalonians", 3),
    ("1Tim", "1 Timothy", 6),
    ("2Tim", "2 Timothy", 4),
    ("Titus", "Titus", 3),
    ("Phlm", "Philemon", 1),
    ("Heb", "Hebrews", 13),
    ("Jas", "James", 5),
    ("1Pet", "1 Peter", 5),
    ("2Pet", "2 Peter", 3),
    ("1John", "1 John", 5),
    ("2John", "2 John", 1),
    ("3John", "3 John", 1),
    ("Jude", "Jude", 1),
    ("Rev", "Revelation", 22),
)

# Split rule: whole books, about 5% of the verses each, chosen to mix genres (narrative, poetry/wisdom, gospel,
# epistle) and to avoid books that largely repeat others: no synoptic gospel (Matthew/Mark/Luke share whole
# passages) and neither Kings nor Chronicles (parallel histories) is held out, so held-out verses are not
# near-copies of training verses. Every other book is train.
VALIDATION_BOOKS = ("Ecclesiastes", "Acts", "Hebrews")
TEST_BOOKS = ("Ruth", "Lamentations", "John", "Romans")
SPLITS = ("train", "validation", "test")

# A pair whose longer side has more than this many times the characters of the shorter is dropped as misaligned.
# Genuine pairs stay far below it: the two sides have about the same length (Spanish ~4% shorter).
MAX_LENGTH_RATIO = 3.0

# Verse-offset model (see versification_offsets). Length: log(len(es) / len(en)) of a true pair is about
# MU_LOG_RATIO with a spread of about SCALE_LOG_RATIO (median and 1.48 * MAD over the corpus: Spanish is ~4% shorter
# in characters). Words: see learn_associations / lexical_match.
MU_LOG_RATIO = -0.04
SCALE_LOG_RATIO = 0.13
MAX_OFFSET = 6
_LENGTH_CAP = 4.0  # one odd length cannot dominate
_LEXICAL_WEIGHT = 6.0  # cost of a pair sharing no translated word; a true pair shares ~75%, a wrong one ~20%
_MISSING_COST = 4.0  # no Spanish verse at v + offset
_MISSING_SHIFTED_EXTRA = 2.0  # ... more when offset != 0, so that "pair with nothing" never beats weak true pairs
_SWITCH_COST = 8.0  # changing offset between consecutive verses: needs several verses of evidence
_OFFSET_COST = 0.5  # per verse at an offset != 0: a shift must be supported all along, not by chance
_NONZERO_PRIOR = 1.0  # ties go to the key alignment

# Books whose last Spanish verse ends with a subscription after "Amén." (Romans to Hebrews), and its pattern.
_SUBSCRIPTION_BOOKS = frozenset(
    (
        "Romans",
        "1 Corinthians",
        "2 Corinthians",
        "Galatians",
        "Ephesians",
        "Philippians",
        "Colossians",
        "1 Thessalonians",
        "2 Thessalonians",
        "1 Timothy",
        "2 Timothy",
        "Titus",
        "Philemon",
        "Hebrews",
    )
)
_SUBSCRIPTION = re.compile(r"(?<=Amén\.)\s+[^.]*\b(?:escrita|enviada)\b.*$", re.IGNORECASE | re.DOTALL)

# Hebrew letter names heading the stanzas of Psalm 119 (and similar acrostics): capitals on purpose.
_HEBREW_LETTERS = frozenset(
    "ALEPH BETH GIMEL DALETH DALET HE VAU VAV ZAIN ZAYIN CHETH HETH TETH JOD YODH YOD CAPH KAPH LAMED LAMEDH MEM "
    "NUN SAMECH SAMEKH AIN AYIN PE TZADDI TSADHE COPH QOPH RESH SIN SHIN SCHIN TAU TAV".split()
)

# A verse key "Book C:V: " as diatheke prints it. Headings and milestones (markup) may precede it on the same line,
# so everything up to the last '>' before the key is the "preverse" part.
_KEY = re.compile(r"^(?P<pre>(?:.*>)?)\s*(?P<book>[^<>\n]+?) (?P<chapter>\d+):(?P<verse>\d+):\s?(?P<text>.*)$")
_MODULE_TRAILER = re.compile(r"^\(\w+\)\s*$")
# Strong's numbers as "-f plain" renders them: " <G1438>", " <H07225>".
_STRONGS = re.compile(r"\s*<[GH]\d+[a-z]?>")
# Elements whose content is not verse text.
_DROP_ELEMENTS = re.compile(r"<(note|speaker|title)\b[^>]*>.*?</\1>", re.DOTALL)
# Non-biblical material appended after the last verse of the module.
_APPENDIX = re.compile(r"<div\b[^>]*\btype=\"(?:glossary|introduction|x-glossary)\"", re.DOTALL)
_TAG = re.compile(r"<[^>]*>")
_CANONICAL_TITLE = re.compile(r"<title\b(?=[^>]*canonical=\"true\")[^>]*>(.*?)</title>", re.DOTALL)
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,;:.!?])")
_ENTITIES = {"&amp;": "&", "&lt;": "<", "&gt;": ">", "&quot;": '"', "&apos;": "'"}


def clean_markup(text: str) -> str:
    """Verse text without Strong's numbers, OSIS markup, headings inside the verse, or appended glossary.

    Word elements that the modules store back to back get the space they lack (see the module docstring): a
    space is inserted where a run of tags that closes an element and then opens one separates two letters, or
    follows ``,;.!?`` and precedes a letter. A clitic added inside a word (``preguntándo<transChange>le``) has no
    closing tag before it and stays attached. Whitespace is collapsed.
    """
    text = _STRONGS.sub("", text)
    appendix = _APPENDIX.search(text)
    if appendix:
        text = text[: appendix.start()]
    text = _DROP_ELEMENTS.sub(" ", text)
    out: list[str] = []
    closed = opened = False  # what the run of tags since the last text character did
    for piece in re.split(r"(<[^>]*>)", text):
        if not piece:
            continue
        if piece.startswith("<") and piece.endswith(">"):
            if piece.endswith("/>"):
                # Milestones (<l/>, <lb/>, <div/>, <milestone/>...) mark line/paragraph breaks: a soft space.
                out.append(" ")
            elif piece.startswith("</"):
                closed = True
            else:
                opened = True
            continue
        prev = out[-1][-1:] if out else ""
        glued_words = closed and prev.isalnum()  # <w>God</w><w>created</w>
        glued_after_punct = prev != "" and prev in ",;.!?"  # Christ,<w>which</w>
        if opened and piece[0].isalpha() and (glued_words or glued_after_punct):
            out.append(" ")
        out.append(piece)
        closed = opened = False
    cleaned = "".join(out)
    for entity, char in _ENTITIES.items():
        cleaned = cleaned.replace(entity, char)
    cleaned = re.sub(r"\s+", " ", cleaned).strip()
    # Soft spaces from milestones can land before punctuation ("word <l/>."): never wanted there.
    return _SPACE_BEFORE_PUNCT.sub(r"\1", cleaned)


def _heading(pre: str) -> str:
    """The canonical heading (e.g. a Psalm superscription) in the markup before a verse key, cleaned; else ''."""
    titles = [clean_markup(t) for t in _CANONICAL_TITLE.findall(pre)]
    return " ".join(t for t in titles if t)


def parse_chapter(output: str, chapter: int) -> dict[int, str]:
    """Verses of one ``diatheke -k "Book C"`` answer as ``{verse number: clean text}``.

    Accepts ``-f internal`` (one verse per line, headings before the key) and ``-f plain`` (lines without a key
    continue the previous verse). Lines keyed to another chapter are ignored, as is diatheke's ``(MODULE)`` trailer.
    A canonical heading is prepended to the first verse it precedes only: diatheke repeats it before every later
    verse of the chapter. Verses whose text cleans to nothing map to ``""`` (the caller decides to drop them).
    """
    raw: dict[int, list[str]] = {}
    current: int | None = None
    last_heading = ""
    for line in output.splitlines():
        if not line.strip() or _MODULE_TRAILER.match(line):
            continue
        match = _KEY.match(line)
        if match is None:
            if current is not None:
                raw[current].append(line)
            continue
        if int(match["chapter"]) != chapter:
            current = None
            continue
        current = int(match["verse"])
        heading = _heading(match["pre"])
        parts = raw.setdefault(current, [])
        if heading and heading != last_heading:
            parts.append(heading)
        last_heading = heading
        parts.append(match["text"])
    return {verse: clean_markup(" ".join(parts)) for verse, parts in raw.items()}


def fix_drop_cap(text: str) -> str:
    """Undo the capitals a chapter's first word(s) are printed in: ``"DE SIETE años"`` -> ``"De siete años"``.

    The first run of consecutive all-capital words (two letters or more, Hebrew letter names excepted) is
    rewritten: its first word capitalised, the rest lower case. ``"Y EZECHÎAS comenzó"`` -> ``"Y Ezechîas comenzó"``.
    """
    words = text.split(" ")

    def is_caps(word: str) -> bool:
        letters = "".join(ch for ch in word if ch.isalpha())
        return len(letters) >= 2 and letters.isupper() and letters not in _HEBREW_LETTERS

    for i, word in enumerate(words):
        if is_caps(word):
            j = i
            while j < len(words) and is_caps(words[j]):
                words[j] = _recase(words[j], capitalize=(j == i))
                j += 1
            break
    return " ".join(words)


def strip_subscription(text: str) -> str:
    """Drop an epistle subscription after the final ``Amén.``: ``"... Amén. Fué escrita de Corinto ..."`` -> ``"... Amén."``."""
    return _SUBSCRIPTION.sub("", text)


def _recase(word: str, capitalize: bool) -> str:
    lowered = word.lower()
    if not capitalize:
        return lowered
    for k, ch in enumerate(lowered):
        if ch.isalpha():
            return lowered[:k] + ch.upper() + lowered[k + 1 :]
    return lowered


def align_verses(
    osis: str,
    book: str,
    chapter: int,
    es: dict[int, str],
    en: dict[int, str],
    stats: Counter | None = None,
    associations: dict[str, frozenset[str]] | None = None,
) -> list[dict]:
    """Pair the verses of one chapter by verse number; drop one-sided, empty, shifted or length-mismatched pairs.

    ``stats`` (optional) counts the kept verses (``aligned``) and why others were dropped: ``only_es``,
    ``only_en``, ``empty``, ``shifted`` (see :func:`versification_offsets`), ``length_ratio``.
    """
    stats = stats if stats is not None else Counter()
    offsets = versification_offsets(es, en, associations)
    records = []
    for verse in sorted(set(es) | set(en)):
        if verse not in en:
            stats["only_es"] += 1
            continue
        if verse not in es:
            stats["only_en"] += 1
            continue
        es_text, en_text = es[verse].strip(), en[verse].strip()
        if not es_text or not en_text:
            stats["empty"] += 1
            continue
        if offsets.get(verse, 0) != 0:
            stats["shifted"] += 1
            continue
        longer, shorter = max(len(es_text), len(en_text)), min(len(es_text), len(en_text))
        if longer > MAX_LENGTH_RATIO * shorter:
            stats["length_ratio"] += 1
            continue
        stats["aligned"] += 1
        records.append(
            {
                "id": f"{osis}.{chapter}.{verse}",
                "book": book,
                "chapter": chapter,
                "verse": verse,
                "split": split_for_book(book),
                "translation": {"es": es_text, "en": en_text},
            }
        )
    return records


_WORD = re.compile(r"\w+")


def _words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


def learn_associations(
    pairs: Iterable[tuple[str, str]], min_count: int = 3, min_dice: float = 0.3, max_doc_fraction: float = 0.2
) -> dict[str, frozenset[str]]:
    """A rough English -> Spanish word dictionary learnt from (mostly right) verse pairs.

    Two words are associated when they occur in at least ``min_count`` of the same pairs and their Dice
    coefficient ``2 * n_both / (n_es + n_en)`` is at least ``min_dice``. Words in more than ``max_doc_fraction`` of
    the verses (``and``, ``y``, ``de``...) carry no alignment information and are left out. Learnt from the key
    alignment itself: the few hundred shifted verses are noise against some 30,000 right ones. On the real corpus
    this gives e.g. ``water -> {agua, aguas}``, ``wept -> {lloraron, lloró}``, ``yahweh -> {jehová}``.
    """
    bags = [(_words(es), _words(en)) for es, en in pairs]
    n_pairs = len(bags)
    df_es: Counter = Counter()
    df_en: Counter = Counter()
    for es_words, en_words in bags:
        df_es.update(es_words)
        df_en.update(en_words)
    limit = max_doc_fraction * n_pairs
    es_vocab = sorted(w for w, n in df_es.items() if min_count <= n <= limit)
    en_vocab = sorted(w for w, n in df_en.items() if min_count <= n <= limit)
    es_id = {w: i for i, w in enumerate(es_vocab)}
    en_id = {w: i for i, w in enumerate(en_vocab)}
    width = len(en_vocab)
    both: Counter = Counter()  # keyed by es_index * width + en_index: ints keep ~2M entries small
    for es_words, en_words in bags:
        es_ids = [es_id[w] for w in es_words if w in es_id]
        en_ids = [en_id[w] for w in en_words if w in en_id]
        both.update(i * width + j for i in es_ids for j in en_ids)
    associations: dict[str, set[str]] = {}
    for key, n in both.items():
        if n < min_count:
            continue
        es_word, en_word = es_vocab[key // width], en_vocab[key % width]
        if 2 * n / (df_es[es_word] + df_en[en_word]) >= min_dice:
            associations.setdefault(en_word, set()).add(es_word)
    return {w: frozenset(s) for w, s in associations.items()}


def lexical_match(es: str, en: str, associations: dict[str, frozenset[str]]) -> float | None:
    """Fraction of the English words that have a learnt Spanish associate in ``es``; None if none is known."""
    known = [w for w in _words(en) if w in associations]
    if not known:
        return None
    es_words = _words(es)
    return sum(1 for w in known if associations[w] & es_words) / len(known)


def versification_offsets(
    es: dict[int, str],
    en: dict[int, str],
    associations: dict[str, frozenset[str]] | None = None,
    max_offset: int = MAX_OFFSET,
) -> dict[int, int]:
    """For each non-empty English verse ``v`` of a chapter, the offset ``d`` such that Spanish ``v + d`` holds it.

    A Viterbi path over ``d`` in ``[-max_offset, max_offset]``. Pairing English ``v`` with Spanish ``v + d`` costs
    how far their log length ratio is from the corpus median (in units of its spread, capped) plus, with
    ``associations``, ``_LEXICAL_WEIGHT * (1 - lexical_match)``; a missing or empty Spanish verse costs a fixed
    amount (more at ``d != 0``). Every change of ``d`` between consecutive verses costs ``_SWITCH_COST`` and every
    verse at ``d != 0`` pays ``_OFFSET_COST``, so the path leaves ``d = 0`` only for a run of verses that fits clearly better shifted.
    Lengths alone find shifts in prose, where verse lengths vary a lot; the word associations also find them in
    poetry (Job 39-40), where all verses are about as long.
    """
    verses = sorted(v for v, text in en.items() if text)
    if not verses:
        return {}
    deltas = range(-max_offset, max_offset + 1)

    def emission(verse: int, delta: int) -> float:
        shift_prior = _OFFSET_COST if delta else 0.0
        spanish = es.get(verse + delta)
        if not spanish:
            return _MISSING_COST + (_MISSING_SHIFTED_EXTRA if delta else 0.0) + shift_prior
        deviation = abs(math.log(len(spanish) / len(en[verse])) - MU_LOG_RATIO) / SCALE_LOG_RATIO
        cost = min(deviation, _LENGTH_CAP) + shift_prior
        if associations is not None:
            match = lexical_match(spanish, en[verse], associations)
            cost += _LEXICAL_WEIGHT * (1.0 - (0.5 if match is None else match))
        return cost

    cost = {d: emission(verses[0], d) + (0.0 if d == 0 else _NONZERO_PRIOR) for d in deltas}
    backpointers = []
    for verse in verses[1:]:
        new_cost, pointer = {}, {}
        for d in deltas:
            prev = min(deltas, key=lambda p: cost[p] + (0.0 if p == d else _SWITCH_COST))
            new_cost[d] = cost[prev] + (0.0 if prev == d else _SWITCH_COST) + emission(verse, d)
            pointer[d] = prev
        backpointers.append(pointer)
        cost = new_cost
    delta = min(deltas, key=lambda d: (cost[d], abs(d)))
    path = [delta]
    for pointer in reversed(backpointers):
        delta = pointer[delta]
        path.append(delta)
    return dict(zip(verses, reversed(path), strict=True))


def split_for_book(book: str) -> str:
    """``"validation"`` / ``"test"`` for the held-out books, ``"train"`` for every other book."""
    if book in VALIDATION_BOOKS:
        return "validation"
    if book in TEST_BOOKS:
        return "test"
    return "train"


def diatheke_chapter(module: str, book: str, chapter: int) -> str:
    """Raw ``diatheke -f internal`` output for one chapter (the only function that runs a process)."""
    result = subprocess.run(
        ["diatheke", "-b", module, "-f", "internal", "-k", f"{book} {chapter}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout


def build_corpus(jobs: int = 4, fetch=diatheke_chapter) -> tuple[list[dict], Counter]:
    """All aligned verses of the 66 books, in canonical order, with the drop statistics."""
    chapters = [(osis, book, c) for osis, book, n in BOOKS for c in range(1, n + 1)]

    def read(item):
        osis, book, c = item
        es = parse_chapter(fetch(ES_MODULE, book, c), c)
        en = parse_chapter(fetch(EN_MODULE, book, c), c)
        if 1 in es:
            es[1] = fix_drop_cap(es[1])
        if book in _SUBSCRIPTION_BOOKS:
            es = {v: strip_subscription(text) for v, text in es.items()}
        return osis, book, c, es, en

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        texts = list(pool.map(read, chapters))
    # Pass 1: a word dictionary from the key alignment; pass 2: per-chapter offsets with lengths and words.
    associations = learn_associations((es[v], en[v]) for _, _, _, es, en in texts for v in en if en[v] and es.get(v))
    stats: Counter = Counter()
    records: list[dict] = []
    for osis, book, c, es, en in texts:
        if not es or not en:
            stats["missing_chapter"] += 1
        records.extend(align_verses(osis, book, c, es, en, stats, associations))
    return records, stats


def write_jsonl_gz(records: list[dict], path: Path) -> None:
    """Byte-reproducible gzip (no timestamp, no file name in the header), one JSON object per line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, compresslevel=9, mtime=0) as gz:
        for record in records:
            gz.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
    path.write_bytes(buffer.getvalue())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2, help="parallel diatheke calls")
    args = parser.parse_args(argv)
    if shutil.which("diatheke") is None:
        sys.exit("diatheke not found: apt-get install diatheke sword-text-web sword-text-sparv")
    records, stats = build_corpus(jobs=args.jobs)
    write_jsonl_gz(records, args.output)
    per_split = Counter(r["split"] for r in records)
    print(
        json.dumps(
            {
                "output": str(args.output),
                "bytes": args.output.stat().st_size,
                "splits": {s: per_split[s] for s in SPLITS},
                "stats": dict(stats),
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
