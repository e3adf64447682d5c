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
    wins = sum(d > 0 for d in diffs)
    assert paired_row.split(" | ")[1] == f"{statistics.mean(diffs):+.2f} ± {statistics.stdev(diffs):.2f} ({wins}/2)"
