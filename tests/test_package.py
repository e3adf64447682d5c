"""The package itself: lazy imports (a pure-torch user never loads transformers), every public name resolves, one
version."""

import importlib.metadata
import subprocess
import sys

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
