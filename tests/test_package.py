"""The package itself: lazy imports (a pure-torch user never loads transformers), every public name resolves, one
version; and the distribution a packager would ship: the sdist and wheel pass `twine check`, the wheel holds every
module and installs into a fresh venv, where hf-cot trains from the installed copy, not from this checkout."""

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
import venv
import zipfile
from pathlib import Path

import pytest

import hf_cot


def _fresh_python(code: str) -> None:
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


@pytest.mark.slow  # a fresh interpreter per check
def test_loss_imports_do_not_load_transformers():
    _fresh_python(
        "import sys\n"
        "import hf_cot.losses\n"
        "from hf_cot import complement_entropy, guided_complement_entropy, complement_objective\n"
        "from hf_cot import linear_complement_entropy\n"
        "assert 'transformers' not in sys.modules, 'the loss functions imported transformers'\n"
        "from hf_cot import COTTrainer\n"  # and a trainer still resolves, loading it on demand
        "assert 'transformers' in sys.modules\n"
    )


def test_every_public_name_resolves():
    for name in hf_cot.__all__:
        assert getattr(hf_cot, name) is not None
    assert set(hf_cot.__all__) <= set(dir(hf_cot))


def test_unknown_attribute_is_an_attribute_error():
    try:
        hf_cot.not_a_name  # noqa: B018
    except AttributeError as err:
        assert "not_a_name" in str(err)
    else:
        raise AssertionError("expected AttributeError")


def test_version_is_written_once():
    assert importlib.metadata.version("hf-cot") == hf_cot.__version__


def test_the_axolotl_plugin_is_imported_only_when_used():
    """`import hf_cot` never imports axolotl; the plugin module without axolotl says what to install."""
    code = (
        "import sys; sys.modules['axolotl'] = None\nimport hf_cot, hf_cot.integrations\n"
        "try:\n    import hf_cot.integrations.axolotl\nexcept ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "install axolotl" in out.stdout and "hf-cot[axolotl]" in out.stdout


ROOT = Path(__file__).resolve().parent.parent
# What the build reads (pyproject.toml, MANIFEST.in, README.md, LICENSE, hf_cot/) and what MANIFEST.in must keep out
# of the sdist (tests/): copied to a scratch directory, so that the build writes nothing into the checkout.
_BUILD_INPUTS = ["pyproject.toml", "MANIFEST.in", "README.md", "LICENSE", "hf_cot", "tests"]

_SMOKE_RUN = textwrap.dedent(
    """
    import importlib.metadata, json, os, subprocess, sys
    import torch
    import hf_cot
    from hf_cot import COTTrainer, COTTrainingArguments
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=61, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=37, max_position_embeddings=64, num_labels=5)
    model = BertForSequenceClassification(config)
    data = [{"input_ids": torch.randint(1, 61, (12,)), "labels": torch.tensor(i % 5)} for i in range(8)]
    args = COTTrainingArguments(output_dir=sys.argv[1], max_steps=2, per_device_train_batch_size=4,
                                report_to=[], use_cpu=True, save_strategy="no", logging_steps=1)
    trainer = COTTrainer(model=model, args=args, train_dataset=data)
    result = trainer.train()
    logs = [entry for entry in trainer.state.log_history if "complement_entropy" in entry]
    metric = subprocess.run([sys.executable, "-m", "hf_cot.metrics", "path", "classification_metrics"],
                            capture_output=True, text=True, check=True).stdout.strip()
    print(json.dumps({"file": hf_cot.__file__, "version": importlib.metadata.version("hf-cot"),
                      "package_version": hf_cot.__version__, "steps": trainer.state.global_step,
                      "loss": result.training_loss, "logged_complement_entropy": len(logs), "metric": metric}))
    """
)


def _site_dirs() -> list[str]:
    """This interpreter's site-packages (torch, transformers, ...), for a fresh venv to read without installing them.
    Only the directories: their .pth files (this checkout's editable hf-cot among them) are not processed there."""
    return [p for p in sys.path if p.endswith("site-packages") and os.path.isdir(p)]


@pytest.mark.slow  # builds the sdist and the wheel, creates a venv and trains 2 steps in a fresh interpreter
def test_the_built_wheel_installs_and_trains(tmp_path):
    pytest.importorskip("twine", reason="twine is in the test extra (scripts/setup_env.sh installs it)")
    src, dist = tmp_path / "src", tmp_path / "dist"
    src.mkdir()
    for name in _BUILD_INPUTS:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        elif (ROOT / name).is_file():
            shutil.copy2(ROOT / name, src / name)
    # No network and no build isolation: the setuptools of this environment builds (what `python -m build
    # --no-isolation` would call).
    for hook in ("build_sdist", "build_wheel"):  # one interpreter each, as a build frontend calls them
        code = f"import sys; from setuptools import build_meta; print(build_meta.{hook}(sys.argv[1]))"
        subprocess.run([sys.executable, "-c", code, str(dist)], cwd=src, check=True, capture_output=True, timeout=300)
    (sdist,) = dist.glob("hf_cot-*.tar.gz")
    (wheel,) = dist.glob("hf_cot-*.whl")

    check = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", str(sdist), str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert check.returncode == 0, check.stdout + check.stderr

    # The wheel: every module and data file of the package, and the metadata a package index shows.
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (metadata_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        metadata = archive.read(metadata_name).decode()
    package_files = {p.relative_to(ROOT).as_posix() for p in (ROOT / "hf_cot").rglob("*") if p.is_file()}
    package_files = {p for p in package_files if "__pycache__" not in p and not p.endswith((".pyc", ".pyo"))}
    assert package_files - names == set()
    for field in ("License-Expression: Apache-2.0", "License-File: LICENSE", "Keywords:", "Classifier:"):
        assert field in metadata, field
    assert 'Requires-Dist: trl<2,>=1.9; extra == "trl"' in metadata
    # The sdist: the library and what builds it, no tests (they read the whole repository: docs/testing.md).
    with tarfile.open(sdist) as archive:
        members = {m.split("/", 1)[1] for m in archive.getnames() if "/" in m}
    assert {"pyproject.toml", "README.md", "LICENSE", "hf_cot/py.typed"} <= members
    assert package_files - members == set()
    assert not [m for m in members if m.startswith("tests/")]

    # A fresh venv that sees this environment's torch / transformers / accelerate but not this checkout; the wheel is
    # installed into it, not editable, with no downloads.
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(site, "zz_parent_environment.pth").write_text("\n".join(_site_dirs()) + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", WANDB_DISABLED="true", OMP_NUM_THREADS="1")
    run = subprocess.run(
        [str(python), "-c", _SMOKE_RUN, str(tmp_path / "out")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    installed = Path(report["file"]).resolve()
    assert installed.is_relative_to(Path(site).resolve()), report["file"]
    assert not installed.is_relative_to(ROOT), report["file"]
    assert report["version"] == report["package_version"] == hf_cot.__version__
    assert report["steps"] == 2 and report["logged_complement_entropy"] == 2
    assert report["loss"] == report["loss"] and report["loss"] > 0  # finite, positive cross-entropy
    assert Path(report["metric"]).resolve().is_relative_to(Path(site).resolve()), report["metric"]
