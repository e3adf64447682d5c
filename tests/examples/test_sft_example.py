"""examples/language-modeling/run_sft.py end to end on its embedded offline default (es->en Bible verses as
prompt/completion, a Llama trained from scratch over a BPE vocabulary trained in the script), at a tiny size.

Checks the metric keys and their ranges, that training learns, that `--cot_mode off` is TRL's `SFTTrainer` (no
complement terms in the logs, and the same losses as the script with the two names swapped back to TRL's), and the
tokenizer cache.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

pytest.importorskip("trl")
pytest.importorskip("tokenizers")

ROOT = Path(__file__).resolve().parents[2]
SFT = ROOT / "examples" / "language-modeling" / "run_sft.py"
BIBLE = ROOT / "examples" / "translation" / "data" / "bible_es_en.jsonl.gz"
VOCAB = 320

# About 10 s of CPU for the three runs, but > 20 s of wall time on a shared 2-core box: marked slow.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not BIBLE.is_file(), reason="the committed Bible corpus is missing"),
]


def load_script(source: str | None = None, name: str = "example_run_sft"):
    """Import run_sft.py as a module (optionally from modified source)."""
    sys.path.insert(0, str(SFT.parent))
    if source is None:
        spec = importlib.util.spec_from_file_location(name, SFT)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    module = type(sys)(name)
    module.__file__ = str(SFT)
    sys.modules[name] = module  # dataclasses look their module up there
    exec(compile(source, str(SFT), "exec"), module.__dict__)
    return module


def tiny_args(out, *extra):
    return [
        "--output_dir", str(out), "--do_train", "--do_eval", "--do_predict", "--use_cpu", "--bf16", "false",
        "--report_to", "none", "--save_strategy", "no", "--disable_tqdm", "true", "--seed", "0",
        "--max_steps", "20", "--logging_steps", "5", "--learning_rate", "3e-3", "--warmup_steps", "2",
        "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "16",
        "--max_train_samples", "400", "--max_eval_samples", "16", "--max_predict_samples", "16",
        "--num_generate_samples", "8", "--max_new_tokens", "8",
        "--bpe_vocab_size", str(VOCAB), "--hidden_size", "32", "--num_hidden_layers", "1",
        "--num_attention_heads", "2", "--intermediate_size", "64", *extra,
    ]  # fmt: skip


def train_logs(out) -> list[dict]:
    history = json.loads((Path(out) / "trainer_state.json").read_text())["log_history"]
    return [entry for entry in history if "loss" in entry and "train_runtime" not in entry]


def check_results(results: dict, vocab: int) -> None:
    assert math.isfinite(results["train_loss"]) and results["train_runtime"] > 0
    for prefix in ("eval", "predict"):
        loss = results[f"{prefix}_loss"]
        assert 0 < loss < math.log(vocab) + 1  # CE of the completion tokens, below a uniform guess after training
        assert results[f"{prefix}_perplexity"] == pytest.approx(math.exp(loss), rel=1e-6)
        assert 0 < results[f"{prefix}_mean_token_accuracy"] <= 1
        assert 0 < results[f"{prefix}_complement_entropy"] <= math.log(vocab - 1) + 1e-4
        assert 0 < results[f"{prefix}_normalized_complement_entropy"] <= 1 + 1e-6
        assert 0 <= results[f"{prefix}_bleu"] <= 100 and 0 <= results[f"{prefix}_chrf"] <= 100
        assert results[f"{prefix}_samples"] == 16 and results[f"{prefix}_generated_samples"] == 8


@pytest.fixture(scope="module")
def off_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sft_off")
    return out, load_script().main(tiny_args(out, "--cot_mode", "off"))


def test_default_offline_run_off_is_sfttrainer(off_run):
    out, results = off_run
    check_results(results, VOCAB)
    assert json.loads((out / "all_results.json").read_text()) == results
    logs = train_logs(out)
    assert logs and all("complement_loss" not in e and "complement_entropy" not in e for e in logs)
    assert logs[-1]["loss"] < logs[0]["loss"]  # it learns
    assert all("mean_token_accuracy" in e for e in logs)  # TRL's own training metrics
    # The tokenizer was trained on the training split and cached in the output dir; the model uses its vocabulary.
    tokenizer = json.loads((out / "bpe_tokenizer" / "tokenizer.json").read_text())
    assert tokenizer["model"]["type"] == "BPE" and len(tokenizer["model"]["vocab"]) <= VOCAB
    assert json.loads((out / "config.json").read_text())["vocab_size"] <= VOCAB
    assert json.loads((out / "bpe_tokenizer" / "bpe_training.json").read_text())["vocab_size"] == VOCAB
    generations = [json.loads(line) for line in (out / "predict_generations.jsonl").read_text().splitlines()]
    assert len(generations) == 8 and generations[0]["prompt"].startswith("Spanish: ")
    assert generations[0]["prompt"].endswith("\nEnglish:")
    assert "sft" in (out / "README.md").read_text()  # TRL's model card


def test_off_equals_the_script_with_trl_names(off_run, tmp_path):
    """The two-name swap back to TRL (`SFTConfig`, `SFTTrainer`) trains the same model as `--cot_mode off`."""
    out, results = off_run
    source = SFT.read_text()
    swapped = source.replace(
        "from hf_cot.trl import COTSFTConfig, COTSFTTrainer", "from trl import SFTConfig, SFTTrainer"
    )
    swapped = swapped.replace("COTSFTConfig", "SFTConfig").replace("COTSFTTrainer", "SFTTrainer")
    assert swapped != source and "COT" not in swapped.split('"""', 2)[2].split("def ")[0]
    plain = load_script(swapped, "example_run_sft_plain").main(tiny_args(tmp_path / "plain"))
    assert [e["loss"] for e in train_logs(tmp_path / "plain")] == pytest.approx([e["loss"] for e in train_logs(out)])
    assert plain["predict_loss"] == pytest.approx(results["predict_loss"], rel=1e-5)


@pytest.mark.parametrize("mode", ["joint"])
def test_default_offline_run_cot(mode, tmp_path):
    results = load_script().main(tiny_args(tmp_path, "--cot_mode", mode))
    check_results(results, VOCAB)
    logs = train_logs(tmp_path)
    assert logs and all("complement_entropy" in e and "mean_token_accuracy" in e for e in logs)


def test_bpe_tokenizer_cache(tmp_path):
    script = load_script()
    texts = [f"Spanish: palabra {i} y más\nEnglish: word {i} and more" for i in range(50)]
    first = script.train_bpe_tokenizer(iter(texts), 300, str(tmp_path))
    assert first("English:").input_ids[0] == first.bos_token_id
    assert (tmp_path / "bpe_training.json").is_file()
    again = script.train_bpe_tokenizer(iter(texts), 300, str(tmp_path))  # loaded from the cache
    assert again.get_vocab() == first.get_vocab()
    smaller = script.train_bpe_tokenizer(iter(texts), 280, str(tmp_path))  # other settings: trained again
    assert len(smaller) <= 280
    assert json.loads((tmp_path / "bpe_training.json").read_text())["vocab_size"] == 280
