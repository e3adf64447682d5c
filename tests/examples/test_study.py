"""The study runner and its summary, end to end on a tiny model (the real runs belong to the study, not to CI)."""

import importlib.util
import json
import statistics
from pathlib import Path

import pytest
from test_examples import tiny_bert_dir  # noqa: F401  (the fixture)

STUDIES = Path(__file__).resolve().parents[2] / "studies"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"study_{name}", STUDIES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_runner_resumes_and_the_summary_matches_the_run_files(tiny_bert_dir, tmp_path, capsys):  # noqa: F811
    run_study, summarize = _load("run_study"), _load("summarize")
    runs = tmp_path / "runs"
    extra = (
        f"--model_name_or_path {tiny_bert_dir} --max_steps 2 --max_train_samples 32 --max_eval_samples 8 "
        "--max_predict_samples 24 --fgsm_epsilons 0.01 --use_cpu"
    )
    argv = [
        "--plan",
        "books",
        "--seeds",
        "0,1",
        "--variants",
        "ce,joint",
        "--jobs",
        "2",
        "--out",
        str(runs),
        "--extra",
        extra,
    ]
    run_study.main(argv)
    results = {}
    for variant in ("ce", "joint"):
        for seed in (0, 1):
            run = runs / "books" / variant / f"seed{seed}"
            command = (run / "command.txt").read_text()
            assert f"--seed {seed}" in command and "run_classification.py" in command
            assert ("--cot_mode off" if variant == "ce" else "--cot_mode joint") in command
            assert json.loads((run / "wall_time.json").read_text())["wall_time_s"] > 0
            results[variant, seed] = json.loads((run / "all_results.json").read_text())
            assert results[variant, seed]["predict_samples"] == 24

    capsys.readouterr()
    run_study.main(argv)  # everything is done: nothing runs again
    assert capsys.readouterr().out.count("done already") == 4

    summarize.main(["--runs", str(runs), "--out", str(tmp_path / "results"), "--no_probabilities"])
    summary = json.loads((tmp_path / "results" / "results.json").read_text())["books"]
    for variant in ("ce", "joint"):
        accuracies = [results[variant, seed]["predict_accuracy"] * 100 for seed in (0, 1)]
        mean, std = summary[variant]["predict_accuracy"]
        assert mean == pytest.approx(statistics.mean(accuracies))
        assert std == pytest.approx(statistics.stdev(accuracies))
    diffs = [(results["joint", s]["predict_accuracy"] - results["ce", s]["predict_accuracy"]) * 100 for s in (0, 1)]
    table = (tmp_path / "results" / "results.md").read_text()
    paired_row = next(line for line in table.splitlines() if line.startswith("| joint | ") and "(" in line)
    wins, ties = sum(d > 0 for d in diffs), sum(d == 0 for d in diffs)
    expected = (
        f"{statistics.mean(diffs):+.2f} ± {statistics.stdev(diffs):.2f} ({wins}/2{f', {ties} tied' if ties else ''})"
    )
    assert paired_row.split(" | ")[1] == expected


def _fake_runs(root, plan, values):
    """{variant: {seed: all_results}} written as the runner writes them (all_results.json + wall_time.json)."""
    for variant, by_seed in values.items():
        for seed, result in by_seed.items():
            run = root / plan / variant / f"seed{seed}"
            run.mkdir(parents=True)
            (run / "all_results.json").write_text(json.dumps(result))
            (run / "wall_time.json").write_text(json.dumps({"wall_time_s": 10.0}))


def _row(section, header, variant):
    """The cells of ``variant``'s row in the table whose header starts with ``header``."""
    table = section.split(header, 1)[1].split("\n\n", 1)[0]
    line = next(x for x in table.splitlines() if x.startswith(f"| {variant} | "))
    return [cell.strip() for cell in line.strip("|").split("|")][1:]


def test_summary_pairs_every_variant_with_each_baseline(tmp_path):
    """The long-tailed tables: COT vs CE, vs label smoothing and vs class weights, paired by seed; lower ECE / NLL
    win; ties are counted apart; calibration and the per-class columns are in the main table."""
    summarize = _load("summarize")

    def run(acc, ece, nll, tail):
        return {"predict_accuracy": acc, "predict_ece": ece, "predict_nll": nll, "predict_tail_recall": tail,
                "predict_balanced_accuracy": acc, "predict_samples": 100}  # fmt: skip

    values = {
        "ce": {0: run(0.70, 0.20, 1.5, 0.10), 1: run(0.72, 0.22, 1.4, 0.20)},
        "label_smoothing": {0: run(0.71, 0.05, 1.1, 0.15), 1: run(0.72, 0.04, 1.0, 0.20)},
        "ce_class_weights": {0: run(0.74, 0.18, 1.6, 0.40), 1: run(0.73, 0.19, 1.7, 0.30)},
        "joint": {0: run(0.73, 0.10, 1.2, 0.20), 1: run(0.72, 0.12, 1.3, 0.25)},
        "joint_class_weights": {0: run(0.75, 0.09, 1.0, 0.50), 1: run(0.76, 0.08, 0.9, 0.30)},
    }
    _fake_runs(tmp_path / "runs", "digits_lt100", values)
    summarize.main(["--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "results"), "--no_probabilities"])
    section = (tmp_path / "results" / "results.md").read_text().split("### digits_lt100")[1]
    header = section.split("\n")[2]
    for column in ("balanced acc.", "tail recall", "ECE (%)", "NLL (nats)"):
        assert column in header
    order = [line.split(" | ")[0][2:] for line in section.split("Paired")[0].splitlines() if line.startswith("| ")]
    assert order[1:] == ["ce", "ce_class_weights", "label_smoothing", "joint", "joint_class_weights"]
    # columns: accuracy, macro-F1 (absent here), balanced acc., tail recall, ECE, NLL
    vs_ce = _row(section, "| variant vs CE |", "joint")
    assert vs_ce[0] == "+1.50 ± 2.12 (1/2, 1 tied)"  # +3 and 0 points
    assert vs_ce[3] == "-10.00 ± 0.00 (2/2)"  # ECE 20 -> 10 and 22 -> 12 points: lower wins
    vs_ls = _row(section, "| variant vs label smoothing |", "joint")
    assert vs_ls[3] == "+6.50 ± 2.12 (0/2)"  # label smoothing is better calibrated on both seeds
    assert vs_ls[4] == "+0.20 ± 0.14 (0/2)"  # NLL
    vs_cw = _row(section, "| variant vs class weights |", "joint_class_weights")
    assert vs_cw[2] == "+5.00 ± 7.07 (1/2, 1 tied)"  # tail recall +10 and 0 points
    assert vs_cw[3] == "-10.00 ± 1.41 (2/2)"  # -9 and -11 points
    # the baselines are not paired with each other outside the CE table
    assert "| label_smoothing |" not in section.split("| variant vs class weights |")[1].split("\n\n")[0]
    assert "| ce_class_weights |" in section.split("| variant vs CE |")[1].split("\n\n")[0]


def test_summary_reports_how_close_a_rerun_came(tmp_path):
    summarize = _load("summarize")
    result = {"predict_accuracy": 0.9, "predict_samples": 360}
    _fake_runs(tmp_path / "old", "digits_adamw", {"ce": {0: result, 1: result}, "joint": {0: result}})
    moved = dict(result, predict_accuracy=0.9 + 3 / 360)  # three test images more
    _fake_runs(tmp_path / "new", "digits_adamw", {"ce": {0: result, 1: moved}, "joint": {0: result, 1: result}})
    summarize.main(["--runs", str(tmp_path / "new"), "--out", str(tmp_path / "results"), "--no_probabilities",
                    "--reference", str(tmp_path / "old")])  # fmt: skip
    text = (tmp_path / "results" / "results.md").read_text().split("### re-run vs")[1]
    assert "| digits_adamw | ce | 2 | 1/2 | 1/2 | 3 |" in text
    assert "| digits_adamw | joint | 1 | 1/1 | 1/1 | 0 |" in text
