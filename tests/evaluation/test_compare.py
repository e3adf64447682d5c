"""`hf-cot compare` (hf_cot/compare.py): the paired statistics against hand computations, and the command end to end on
a fake training script written here (a fraction of a second per run): the table's numbers, resuming, a failing arm.
One real run of examples/text-classification/run_classification.py on a tiny random BERT is `slow`."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hf_cot import compare
from hf_cot.__main__ import main as hf_cot_main

ROOT = Path(__file__).resolve().parents[2]

# A training script with the interface compare needs (--cot_mode, --seed, --output_dir, plus one Trainer knob) whose
# "metrics" are known functions of its arguments, so the expected table is computed by hand below. Every run appends
# a line to calls.log next to the output folders (how the tests count what ran) and writes its OMP_NUM_THREADS to
# env.json. `--cot_mode broken` fails, `--cot_mode silent` exits 0 without results.
FAKE_SCRIPT = textwrap.dedent(
    """\
    import argparse, json, os, sys
    parser = argparse.ArgumentParser()
    parser.add_argument("--cot_mode", default="joint")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--label_smoothing_factor", type=float, default=0.0)
    parser.add_argument("--lr", type=float, default=1.0)
    args = parser.parse_args()
    with open(os.path.join(os.path.dirname(os.path.dirname(args.output_dir)), "calls.log"), "a") as f:
        f.write(f"{args.cot_mode} {args.seed} {args.label_smoothing_factor}\\n")
    print(f"training {args.cot_mode} seed {args.seed}")
    with open(os.path.join(args.output_dir, "env.json"), "w") as f:
        json.dump({"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}, f)
    if args.cot_mode == "broken":
        print("ValueError: cot_mode 'broken' is not one of off, joint, alternating, guided", file=sys.stderr)
        sys.exit(3)
    if args.cot_mode == "silent":  # exits 0 without writing results
        sys.exit(0)
    if args.cot_mode == "off":
        accuracy = 0.70 + 0.01 * args.seed + 0.05 * args.label_smoothing_factor
    else:
        accuracy = 0.73 - 0.03 * args.seed
    results = {"eval_accuracy": accuracy, "eval_loss": 1.0 - accuracy, "epoch": 1.0, "train_runtime": 0.5,
               "eval_samples": 10, "lr_seen": args.lr}
    with open(os.path.join(args.output_dir, "all_results.json"), "w") as f:
        json.dump(results, f)
    """
)


@pytest.fixture
def fake_script(tmp_path):
    path = tmp_path / "fake_train.py"
    path.write_text(FAKE_SCRIPT)
    return str(path)


def calls(out: Path) -> list[str]:
    path = out / "calls.log"
    return path.read_text().splitlines() if path.exists() else []


# --- the pure pieces -----------------------------------------------------------------------------------------------


def test_paired_differences_and_seeds_won_by_hand():
    base = {0: 0.70, 1: 0.71, 2: 0.80}
    arm = {0: 0.73, 1: 0.70, 3: 0.99}  # seed 2 failed for the arm, seed 3 for the baseline: neither pairs
    diffs = compare.paired_differences(arm, base)
    assert list(diffs) == [0, 1]
    assert diffs[0] == pytest.approx(0.03) and diffs[1] == pytest.approx(-0.01)
    assert compare.seeds_won(diffs, "higher") == (1, 0, 1)
    assert compare.seeds_won({0: -0.5, 1: 0.0, 2: -0.1}, "lower") == (2, 1, 0)
    # The same number summed in another order (0.1 + 0.2 != 0.3 in floating point) is a tie, not a seed won; a real
    # difference of one part in a million is not.
    rounded = compare.paired_differences({0: 0.1 + 0.2, 1: 0.3 + 3e-7}, {0: 0.3, 1: 0.3})
    assert 0.1 + 0.2 != 0.3 and rounded[0] == 0.0 and rounded[1] == pytest.approx(3e-7)
    assert compare.seeds_won(rounded, "higher") == (1, 1, 0)
    with pytest.raises(ValueError, match="'higher' or 'lower'"):
        compare.seeds_won(diffs, "up")


def test_summarize_by_hand():
    results = {
        "ce": {0: {"acc": 0.70, "loss": 0.30}, 1: {"acc": 0.71, "loss": 0.29}},
        "joint": {0: {"acc": 0.73, "loss": 0.27}, 1: {"acc": 0.70, "loss": 0.30}},
    }
    summary = compare.summarize(results, ["acc", "loss"], {"acc": "higher", "loss": "lower"})
    ce, joint = summary["acc"]["arms"]["ce"], summary["acc"]["arms"]["joint"]
    assert ce["mean"] == pytest.approx(0.705) and ce["std"] == pytest.approx(math.sqrt(2 * 0.005**2))
    assert ce["vs_baseline"] is None
    # differences +0.03 and -0.01: mean +0.01, sample std sqrt((0.02^2 + 0.02^2) / 1)
    paired = joint["vs_baseline"]
    assert paired["mean"] == pytest.approx(0.01) and paired["std"] == pytest.approx(math.sqrt(2) * 0.02)
    assert (paired["won"], paired["tied"], paired["lost"], paired["n"]) == (1, 0, 1, 2)
    # loss is lower-better: its differences are -0.03 (won, seed 0) and +0.01 (lost)
    loss = summary["loss"]["arms"]["joint"]["vs_baseline"]
    assert loss["mean"] == pytest.approx(-0.01) and (loss["won"], loss["lost"]) == (1, 1)
    # one seed: no spread to estimate
    single = compare.summarize({"ce": {0: {"acc": 0.5}}}, ["acc"], {"acc": "higher"})
    assert single["acc"]["arms"]["ce"]["std"] is None
    table = compare.format_markdown(summary)
    assert "| acc | higher | joint | 2 | 0.7150 | 0.0212 | +0.0100 ± 0.0283 | 1/2 |" in table
    assert "| loss | lower | ce | 2 | 0.2950 | 0.0071 | (baseline) | (baseline) |" in table


@pytest.mark.parametrize(
    "metric, better",
    [
        ("eval_accuracy", "higher"), ("predict_macro_f1", "higher"), ("predict_bleu", "higher"),
        ("predict_complement_entropy", "higher"), ("fgsm_accuracy_eps_0.01", "higher"), ("eval_loss", "lower"),
        ("predict_ece", "lower"), ("predict_nll", "lower"), ("predict_error", "lower"),
        ("predict_perplexity", "lower"), ("train_runtime", "lower"),
    ],
)  # fmt: skip
def test_default_directions(metric, better):
    assert compare.better_direction(metric) == better


def test_direction_overrides():
    assert compare.better_direction("predict_gen_len", lower=["*_gen_len"]) == "lower"
    assert compare.better_direction("eval_loss", higher=["eval_loss"]) == "higher"
    with pytest.raises(ValueError, match="matches both"):
        compare.better_direction("x", lower=["x"], higher=["*"])


def test_arms_parsing_and_resolution():
    # what the shell hands over for --arm w05="--cot_mode joint --complement_weight 0.5"
    assert compare.parse_arm("w05=--cot_mode joint --complement_weight 0.5") == (
        "w05",
        ["--cot_mode", "joint", "--complement_weight", "0.5"],
    )
    assert compare.parse_arm("q=--run_name 'a b'") == ("q", ["--run_name", "a b"])
    for bad, message in (("nameless", "expected NAME="), ("../x=--a", "must be letters"), ("x=--a 'b", "quotation")):
        with pytest.raises(ValueError, match=message):
            compare.parse_arm(bad)
    # default: ce, label_smoothing, joint, then the custom arms; a custom arm may replace a default one
    arms = compare.resolve_arms(None, ["w05=--cot_mode joint --complement_weight 0.5", "joint=--cot_mode joint --x 1"])
    assert list(arms) == ["ce", "label_smoothing", "joint", "w05"]
    assert arms["label_smoothing"] == ["--cot_mode", "off", "--label_smoothing_factor", "0.1"]
    assert arms["joint"] == ["--cot_mode", "joint", "--x", "1"]
    assert list(compare.resolve_arms(["guided", "ce"])) == ["guided", "ce"]
    with pytest.raises(ValueError, match="unknown arm"):
        compare.resolve_arms(["ce", "nope"])
    with pytest.raises(ValueError, match="more than once"):
        compare.resolve_arms(["ce", "ce"])


def test_select_metrics():
    runs = [{"eval_accuracy": 0.5, "epoch": 1.0, "eval_samples": 9, "train_runtime": 2.0, "note": "x", "ok": True},
            {"eval_loss": 0.7, "train_samples_per_second": 3.0, "pgd_steps": 10}]  # fmt: skip
    assert compare.select_metrics(runs) == ["eval_accuracy", "eval_loss"]
    # a pattern leaves the bookkeeping keys out (eval_samples), an exact name does not (train_runtime)
    assert compare.select_metrics(runs, ["eval_loss", "eval_*", "train_runtime", "missing"]) == [
        "eval_loss",
        "eval_accuracy",
        "train_runtime",
    ]


# --- the command end to end, on the fake script ---------------------------------------------------------------------


def run_compare(out, fake_script, *options, capsys):
    status = compare.main(["--seeds", "0,1", "--out", str(out), *options, "--", sys.executable, fake_script])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_two_arms_two_seeds_table_resume_and_rerun(tmp_path, fake_script, capsys):
    out = tmp_path / "runs" / "cmp"
    status, stdout, _ = run_compare(out, fake_script, "--arms", "ce,joint", capsys=capsys)
    assert status == 0, stdout
    # progress: seeds outermost, k/N, arm, seed, seconds
    lines = [line for line in stdout.splitlines() if ": done in " in line]
    assert [line.split(": done in")[0] for line in lines] == [
        "[compare] 1/4 ce seed 0", "[compare] 2/4 joint seed 0", "[compare] 3/4 ce seed 1", "[compare] 4/4 joint seed 1",
    ]  # fmt: skip
    assert all(line.endswith(" s") for line in lines)
    assert sorted(calls(out)) == ["joint 0 0.0", "joint 1 0.0", "off 0 0.0", "off 1 0.0"]

    run_dir = out / "joint" / "seed1"
    command = (run_dir / "command.txt").read_text().strip()
    assert command.endswith(f"{fake_script} --cot_mode joint --seed 1 --output_dir {run_dir}")
    assert "training joint seed 1" in (run_dir / "log.txt").read_text()
    assert json.loads((run_dir / "compare_done.json").read_text())["returncode"] == 0

    report = json.loads((out / "compare.json").read_text())
    assert report["baseline"] == "ce" and report["seeds"] == [0, 1] and report["failed"] == []
    # The bookkeeping keys (epoch, eval_samples, train_runtime) are not metrics; lr_seen is (constant).
    assert list(report["metrics"]) == ["eval_accuracy", "eval_loss", "lr_seen"]
    accuracy = report["metrics"]["eval_accuracy"]
    assert accuracy["better"] == "higher" and report["metrics"]["eval_loss"]["better"] == "lower"
    # By hand: ce 0.70, 0.71; joint 0.73, 0.70 -> differences +0.03, -0.01.
    ce, joint = accuracy["arms"]["ce"], accuracy["arms"]["joint"]
    assert ce["values"] == pytest.approx({"0": 0.70, "1": 0.71})
    assert ce["mean"] == pytest.approx(0.705) and ce["std"] == pytest.approx(0.01 / math.sqrt(2))
    assert joint["mean"] == pytest.approx(0.715) and joint["std"] == pytest.approx(0.03 / math.sqrt(2))
    paired = joint["vs_baseline"]
    assert paired["differences"] == pytest.approx({"0": 0.03, "1": -0.01})
    assert paired["mean"] == pytest.approx(0.01) and paired["std"] == pytest.approx(0.04 / math.sqrt(2))
    assert (paired["won"], paired["tied"], paired["lost"]) == (1, 0, 1)
    loss = report["metrics"]["eval_loss"]["arms"]["joint"]["vs_baseline"]
    assert loss["mean"] == pytest.approx(-0.01) and (loss["won"], loss["lost"]) == (1, 1)
    assert report["metrics"]["lr_seen"]["arms"]["joint"]["vs_baseline"]["tied"] == 2

    table = (out / "compare.md").read_text()
    assert "| eval_accuracy | higher | joint | 2 | 0.7150 | 0.0212 | +0.0100 ± 0.0283 | 1/2 |" in table
    assert "| eval_loss | lower | joint | 2 | 0.2850 | 0.0212 | -0.0100 ± 0.0283 | 1/2 |" in table
    assert "| lr_seen | higher | joint | 2 | 1.0000 | 0.0000 | +0.0000 ± 0.0000 | 0/2 (2 tied) |" in table
    assert table.split("\n\n", 1)[0].startswith("hf-cot compare: 2 arm(s) x 2 seed(s), paired by seed against `ce`")
    assert "| eval_accuracy | higher | joint |" in stdout  # the table is printed too
    if (out / "compare.png").exists():
        assert (out / "compare.png").stat().st_size > 0
    else:
        assert "matplotlib is not installed" in stdout

    # Second call: every run is skipped, says so, and the table is the same.
    status, stdout, _ = run_compare(out, fake_script, "--arms", "ce,joint", "--no_plot", capsys=capsys)
    assert status == 0
    assert stdout.count("skipped, done already") == 4 and "running" not in stdout
    assert len(calls(out)) == 4
    assert json.loads((out / "compare.json").read_text())["metrics"] == report["metrics"]
    assert [r["status"] for r in json.loads((out / "compare.json").read_text())["runs"]] == ["skipped"] * 4

    # A run without its completion marker (interrupted) runs again; so does a run whose command changed; --rerun all.
    (out / "ce" / "seed0" / "compare_done.json").unlink()
    status, stdout, _ = run_compare(out, fake_script, "--arms", "ce,joint", "--no_plot", capsys=capsys)
    assert status == 0 and stdout.count("skipped") == 3 and "1/4 ce seed 0: running" in stdout
    status, stdout, _ = run_compare(
        out, fake_script, "--arms", "ce,joint", "--arm", "joint=--cot_mode joint --lr 2", "--no_plot", capsys=capsys
    )
    assert status == 0 and stdout.count("skipped") == 2 and stdout.count(": running") == 2
    assert len(calls(out)) == 7
    status, stdout, _ = run_compare(out, fake_script, "--arms", "ce,joint", "--rerun", "--no_plot", capsys=capsys)
    assert status == 0 and "skipped" not in stdout and len(calls(out)) == 11


def test_jobs_give_the_same_runs_and_table_in_plan_order(tmp_path, fake_script, capsys):
    """--jobs 2 runs two at once; the report lists the runs in the plan's order and its table equals --jobs 1's."""
    tables = {}
    for jobs in ("1", "2"):
        out = tmp_path / f"jobs{jobs}"
        status, stdout, _ = run_compare(out, fake_script, "--arms", "ce,joint", "--jobs", jobs, "--no_plot",
                                        capsys=capsys)  # fmt: skip
        assert status == 0 and stdout.count(": done in ") == 4
        report = json.loads((out / "compare.json").read_text())
        assert [(r["arm"], r["seed"]) for r in report["runs"]] == [("ce", 0), ("joint", 0), ("ce", 1), ("joint", 1)]
        assert sorted(calls(out)) == ["joint 0 0.0", "joint 1 0.0", "off 0 0.0", "off 1 0.0"]
        tables[jobs] = report["metrics"]
    assert tables["1"] == tables["2"]
    # A dry run says which runs would be skipped (finished with the same command) and which would run.
    (tmp_path / "jobs1" / "joint" / "seed1" / "compare_done.json").unlink()
    capsys.readouterr()
    assert compare.main(["--seeds", "0,1", "--arms", "ce,joint", "--out", str(tmp_path / "jobs1"), "--dry_run", "--",
                         sys.executable, fake_script]) == 0  # fmt: skip
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith(("[compare] 1/", "[compare] 2/",
                                                                              "[compare] 3/", "[compare] 4/"))]  # fmt: skip
    assert ["done already" in x for x in lines] == [True, True, True, False]
    with pytest.raises(SystemExit):
        compare.main(["--jobs", "0", "--", "python", "x.py"])


def test_jobs_split_the_cores_unless_the_user_set_omp_num_threads(tmp_path, fake_script, capsys, monkeypatch):
    """Several runs at once each get cores // jobs threads (PyTorch would start one per core in every process); one
    job, or an OMP_NUM_THREADS of the user's, leaves the environment as it is."""
    monkeypatch.setattr(compare.runner, "available_cores", lambda: 8)

    def threads_seen(out):
        return {json.loads(p.read_text())["OMP_NUM_THREADS"] for p in Path(out).glob("*/seed*/env.json")}

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    for jobs, expected in (("3", {"2"}), ("1", {None})):
        status, stdout, _ = run_compare(tmp_path / f"j{jobs}", fake_script, "--arms", "ce,joint", "--jobs", jobs,
                                        "--no_plot", capsys=capsys)  # fmt: skip
        assert status == 0 and threads_seen(tmp_path / f"j{jobs}") == expected
        assert ("each run gets OMP_NUM_THREADS=2" in stdout) == (jobs == "3")
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    status, stdout, _ = run_compare(tmp_path / "mine", fake_script, "--arms", "ce,joint", "--jobs", "2", "--no_plot",
                                    capsys=capsys)  # fmt: skip
    assert status == 0 and threads_seen(tmp_path / "mine") == {"5"} and "each run gets" not in stdout
    # More jobs than cores: one thread each, never zero.
    assert compare.run_environment(16, {}, cores=8)[0] == {"OMP_NUM_THREADS": "1"}


def test_label_smoothing_arm_and_a_failing_arm(tmp_path, fake_script, capsys):
    out = tmp_path / "runs" / "cmp"
    status, stdout, stderr = run_compare(
        out, fake_script, "--arms", "ce,label_smoothing,bad", "--arm", "bad=--cot_mode broken", "--no_plot",
        capsys=capsys,
    )  # fmt: skip
    assert status == 1
    assert "[compare] 3/6 bad seed 0: FAILED (exit status 3)" in stdout
    assert f"[compare]   command: {sys.executable} {fake_script} --cot_mode broken --seed 0 --output_dir" in stdout
    assert "ValueError: cot_mode 'broken' is not one of" in stdout  # the tail of its log
    assert "2 of 6 runs failed: bad seed 0, bad seed 1" in stderr
    assert "6/6 bad seed 1: FAILED" in stdout  # the other runs went on
    report = json.loads((out / "compare.json").read_text())
    assert [(r["arm"], r["seed"], r["returncode"]) for r in report["failed"]] == [("bad", 0, 3), ("bad", 1, 3)]
    assert not (out / "bad" / "seed0" / "compare_done.json").exists()
    # label smoothing: 0.70 + 0.01 * seed + 0.005 -> +0.005 on both seeds, won 2/2
    smoothing = report["metrics"]["eval_accuracy"]["arms"]["label_smoothing"]
    assert smoothing["vs_baseline"]["mean"] == pytest.approx(0.005) and smoothing["vs_baseline"]["won"] == 2
    assert report["metrics"]["eval_accuracy"]["arms"]["bad"]["n"] == 0
    table = (out / "compare.md").read_text()
    assert "| eval_accuracy | higher | bad | 0 (seeds 0, 1 failed) | — | — | — | — |" in table
    assert "Failed runs" in table and "| bad | 1 | 3 | `" in table

    # Resuming retries only the failed runs.
    status, stdout, _ = run_compare(out, fake_script, "--arms", "ce,label_smoothing,bad", "--arm", "bad=--cot_mode broken",
                                    "--no_plot", capsys=capsys)  # fmt: skip
    assert status == 1 and stdout.count("skipped") == 4 and stdout.count("FAILED") == 2


def test_folders_interrupted_runs_keep_rerun_empties(tmp_path, fake_script, capsys):
    out = tmp_path / "runs" / "cmp"
    # An interrupted earlier attempt: a checkpoint and a partial all_results.json, no completion marker.
    interrupted = out / "silent" / "seed0"
    interrupted.mkdir(parents=True)
    (interrupted / "checkpoint-5").mkdir()
    (interrupted / "all_results.json").write_text('{"eval_accuracy": 0.99}')
    options = ("--seeds", "0", "--arms", "ce,silent", "--arm", "silent=--cot_mode silent", "--no_plot")
    status, stdout, _ = run_compare(out, fake_script, *options, capsys=capsys)
    # exit 0 without results is a failure; the stale file was not read as this run's results, the checkpoint stays
    assert status == 1 and "FAILED (exit status 0 but no readable all_results.json)" in stdout
    assert (interrupted / "checkpoint-5").is_dir() and not (interrupted / "all_results.json").exists()
    assert json.loads((out / "compare.json").read_text())["metrics"]["eval_accuracy"]["arms"]["silent"]["n"] == 0
    # --rerun starts every run from an empty folder
    (out / "ce" / "seed0" / "checkpoint-9").mkdir()
    run_compare(out, fake_script, *options, "--rerun", capsys=capsys)
    assert not (out / "ce" / "seed0" / "checkpoint-9").exists() and not (interrupted / "checkpoint-5").exists()
    assert (out / "ce" / "seed0" / "compare_done.json").exists()


def test_usage_errors_and_dry_run(tmp_path, fake_script, capsys):
    out = tmp_path / "runs" / "cmp"
    for argv, message in (
        (["--seeds", "0"], "no training command"),
        (["--seeds", "0,0", "--", "python", "x.py"], "distinct integers"),
        (["--seeds", "0,a", "--", "python", "x.py"], "distinct integers"),
        (["--arms", "ce,nope", "--", "python", "x.py"], "unknown arm"),
        (["--", "python", "run.py", "args.json"], "one .json file"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            compare.main(argv)
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err
    assert compare.main(["--seeds", "3", "--out", str(out), "--dry_run", "--", "python", "t.py", "--seed", "9"]) == 0
    stdout = capsys.readouterr().out
    assert "the command's own --seed is overridden" in stdout
    assert f"3/3 python t.py --seed 9 --cot_mode joint --seed 3 --output_dir {out / 'joint' / 'seed3'}" in stdout
    assert not out.exists()


def test_plot_is_skipped_with_a_message_without_matplotlib(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib...` raises ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    summary = compare.summarize({"ce": {0: {"a": 1.0}}}, ["a"], {"a": "higher"})
    assert "matplotlib is not installed" in compare.plot(summary, str(tmp_path / "p.png"))
    assert not (tmp_path / "p.png").exists()


def test_entry_points(capsys):
    """`hf-cot compare` (pyproject's [project.scripts] -> hf_cot.__main__:main) and `python -m hf_cot.compare`; the
    command loads neither torch nor transformers (it only runs the user's script)."""
    tomllib = pytest.importorskip("tomllib")
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"hf-cot": "hf_cot.__main__:main"}
    with pytest.raises(SystemExit) as exit_info:
        hf_cot_main(["compare", "--help"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("usage: hf-cot compare [options] -- TRAINING COMMAND")
    assert hf_cot_main(["--help"]) == 0 and "compare" in capsys.readouterr().out
    assert hf_cot_main(["nope"]) == 2 and "unknown command 'nope'" in capsys.readouterr().err
    code = (
        "import sys, runpy\n"
        "sys.argv = ['x', '--help']\n"
        "try:\n    runpy.run_module('hf_cot.compare', run_name='__main__')\nexcept SystemExit as e:\n    assert e.code == 0\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'compare imported torch'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "usage: python -m hf_cot.compare" in result.stdout


# --- one real run: the classification example on a tiny random BERT --------------------------------------------------


@pytest.mark.slow  # each run imports torch, transformers and datasets in a fresh interpreter (~10-20 s on 2 cores)
def test_real_example_script_two_arms_one_seed(tmp_path, capsys):
    sys.path.insert(0, str(ROOT / "tests" / "examples"))
    from test_examples import CLASSIFICATION, WORDS, _rows
    from transformers import BertConfig, BertModel, BertTokenizerFast

    model_dir, data_dir = tmp_path / "tiny-bert", tmp_path / "data"
    model_dir.mkdir()
    data_dir.mkdir()
    (model_dir / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    tokenizer = BertTokenizerFast(str(model_dir / "vocab.txt"), do_lower_case=True, model_max_length=32)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=16, max_position_embeddings=32)  # fmt: skip
    BertModel(config).save_pretrained(model_dir)  # the head is made for the labels found, as from a Hub encoder
    tokenizer.save_pretrained(model_dir)
    for split, n, seed in (("train", 16, 0), ("test", 8, 2)):
        with open(data_dir / f"{split}.json", "w") as f:
            f.writelines(json.dumps({"sentence": " ".join(w), "topic": t}) + "\n" for t, w in _rows(n, seed))
    command = [
        sys.executable, str(CLASSIFICATION), "--model_name_or_path", str(model_dir),
        "--train_file", str(data_dir / "train.json"), "--test_file", str(data_dir / "test.json"),
        "--text_column_name", "sentence", "--label_column_name", "topic", "--max_seq_length", "16",
        "--do_train", "--do_predict", "--use_cpu", "--report_to", "none", "--disable_tqdm", "true",
        "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "8", "--max_steps", "2",
        "--save_strategy", "no",
    ]  # fmt: skip
    out = tmp_path / "cmp"
    env = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1"}
    for key, value in env.items():
        os.environ[key] = value  # the conftest fixture restores the environment
    status = compare.main(
        ["--seeds", "0", "--arms", "ce,label_smoothing", "--metrics", "predict_*", "--no_plot", "--out", str(out), "--",
         *command]
    )  # fmt: skip
    stdout = capsys.readouterr().out
    assert status == 0, stdout + "".join(p.read_text()[-3000:] for p in out.rglob("log.txt"))
    report = json.loads((out / "compare.json").read_text())
    assert {"predict_accuracy", "predict_macro_f1", "predict_loss"} <= set(report["metrics"])
    assert report["metrics"]["predict_accuracy"]["arms"]["label_smoothing"]["vs_baseline"]["n"] == 1
    assert "--label_smoothing_factor 0.1 --seed 0" in (out / "label_smoothing" / "seed0" / "command.txt").read_text()
