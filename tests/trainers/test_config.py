"""COT argument classes: defaults, validation, and parsing by HfArgumentParser from the CLI and JSON."""

import json

import pytest
from transformers import HfArgumentParser, Seq2SeqTrainingArguments, TrainingArguments

from hf_cot import COTSeq2SeqTrainingArguments, COTTrainingArguments


def test_defaults(out_dir):
    args = COTTrainingArguments(output_dir=out_dir)
    assert isinstance(args, TrainingArguments)
    assert args.cot_mode == "joint"  # the study's choice (RESULTS.md): never worse than CE on the three tasks
    assert args.complement_normalization == "log"
    assert args.complement_every == 1
    assert args.guided_alpha == pytest.approx(1 / 3)
    assert args.complement_learning_rate is None
    assert args.effective_complement_learning_rate == args.learning_rate
    assert (
        COTTrainingArguments(output_dir=out_dir, complement_learning_rate=0.5).effective_complement_learning_rate
        == 0.5
    )


@pytest.mark.parametrize(
    "kwargs, flag",
    [
        ({"cot_mode": "complement"}, "--cot_mode"),
        ({"complement_learning_rate": -1e-5}, "--complement_learning_rate"),
        ({"complement_weight": -1.0}, "--complement_weight"),
        ({"guided_alpha": -0.1}, "--guided_alpha"),
        ({"complement_every": 0}, "--complement_every"),
        ({"complement_every": 1.5}, "--complement_every"),
        ({"complement_normalization": "K"}, "--complement_normalization"),
    ],
)
def test_invalid_values_fail_at_construction_naming_the_flag(kwargs, flag, out_dir):
    for cls in (COTTrainingArguments, COTSeq2SeqTrainingArguments):
        with pytest.raises(ValueError, match=flag):
            cls(output_dir=out_dir, **kwargs)


def test_parse_from_command_line(out_dir):
    parser = HfArgumentParser(COTSeq2SeqTrainingArguments)
    (args,) = parser.parse_args_into_dataclasses(
        [
            "--output_dir",
            out_dir,
            "--cot_mode",
            "joint",
            "--complement_weight",
            "0.5",
            "--complement_normalization",
            "paper",
            "--complement_every",
            "3",
            "--complement_learning_rate",
            "0.01",
            "--predict_with_generate",
        ]
    )
    assert isinstance(args, Seq2SeqTrainingArguments)
    assert (args.cot_mode, args.complement_weight, args.complement_normalization) == ("joint", 0.5, "paper")
    assert (args.complement_every, args.complement_learning_rate, args.predict_with_generate) == (3, 0.01, True)


def test_parse_from_json(tmp_path, out_dir):
    path = tmp_path / "args.json"
    path.write_text(json.dumps({"output_dir": out_dir, "cot_mode": "guided", "guided_alpha": 0.5}))
    (args,) = HfArgumentParser(COTTrainingArguments).parse_json_file(str(path))
    assert (args.cot_mode, args.guided_alpha) == ("guided", 0.5)


def test_cli_rejects_unknown_mode(out_dir):
    with pytest.raises(SystemExit):  # argparse `choices`
        HfArgumentParser(COTTrainingArguments).parse_args_into_dataclasses(
            ["--output_dir", out_dir, "--cot_mode", "x"]
        )


def test_help_documents_every_field():
    parser = HfArgumentParser(COTTrainingArguments)
    text = parser.format_help()
    for name in (
        "cot_mode",
        "complement_learning_rate",
        "complement_weight",
        "guided_alpha",
        "complement_normalization",
        "complement_every",
    ):
        assert f"--{name}" in text
