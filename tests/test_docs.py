"""The documentation's links and commands: every relative link in the README, docs/, the examples' READMEs,
RESULTS.md, BENCHMARKS.md and CHANGELOG.md points at a file of the repository (and, with `#anchor`, at a heading that
GitHub renders with that id); every command they show that runs a repository file (`python path.py`, `bash
path.sh`, `accelerate launch ... path.py`, `torchrun ... path.py`, `axolotl train path.yml`, in shell code blocks and
in inline code) names one that exists; and every `--flag` such a command passes to a Python script of the repository
is one that the script's `--help` lists."""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _documents() -> list[Path]:
    docs = {ROOT / "README.md", ROOT / "RESULTS.md", ROOT / "BENCHMARKS.md", ROOT / "CHANGELOG.md"}
    docs |= set(ROOT.glob("docs/*.md"))
    docs |= set(ROOT.glob("examples/**/README.md"))
    return sorted(docs)


DOCUMENTS = _documents()

# Files a command names that are not in this repository, on purpose: the upstream transformers example scripts the
# examples' README shows how to run with our metrics (in the user's checkout of transformers), and placeholders.
NOT_OURS = {
    "run_classification.py": "transformers' examples/pytorch/text-classification script (examples/README.md)",
    "run_translation.py": "transformers' examples/pytorch/translation script (examples/README.md)",
    "script.py": "a placeholder for the user's script (docs/compatibility.md)",
}
# Scripts that pass their arguments on to another one: the flags of `bash scripts/demo.sh --flag` are compare_ce_cot's.
FORWARDS = {"scripts/demo.sh": "examples/text-classification/compare_ce_cot.py"}

SHELL_LANGUAGES = {"", "bash", "sh", "shell", "console"}
RUNNER = re.compile(
    r"^(?:[A-Za-z_][A-Za-z0-9_]*=\S*\s+)*"  # VAR=value prefixes
    r"(?:\S*/)?(?:python3?|bash|sh|accelerate\s+launch|torchrun|axolotl\s+train)(?:\s|$)"
)


# --- parsing ---------------------------------------------------------------------------------------------------------


@dataclass
class Parsed:
    prose: list[str]  # the document's lines, with fenced blocks blanked (line numbers kept)
    blocks: list[tuple[str, int, list[str]]]  # (info string's language, first line number, lines)


def parse(text: str) -> Parsed:
    prose, blocks = [], []
    fence = None  # (char, length) of the open fence
    for number, line in enumerate(text.splitlines(), 1):
        match = re.match(r"^ {0,3}(`{3,}|~{3,})\s*([^`\s]*)", line)
        if fence is None and match:
            fence = (match.group(1)[0], len(match.group(1)))
            blocks.append((match.group(2).lower(), number + 1, []))
            prose.append("")
        elif fence is not None:
            if re.match(rf"^ {{0,3}}{re.escape(fence[0])}{{{fence[1]},}}\s*$", line):
                fence = None
            else:
                blocks[-1][2].append(line)
            prose.append("")
        else:
            prose.append(line)
    return Parsed(prose, blocks)


def github_slug(heading: str) -> str:
    """The id GitHub gives a heading (github-slugger): markup and punctuation dropped, lower case, spaces to '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())  # a link's text
    text = re.sub(r"<[^>]+>", "", text).lower()  # inline HTML
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found, seen = set(), {}
    for line in parse(path.read_text(encoding="utf-8")).prose:
        match = re.match(r"^ {0,3}#{1,6}\s+(.*?)(?:\s+#+)?\s*$", line)
        if match:
            slug = github_slug(match.group(1))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            found.add(slug if count == 0 else f"{slug}-{count}")
        found |= set(re.findall(r"""<a\s+(?:name|id)=["']([^"']+)["']""", line))
    return found


_CODE_SPAN = re.compile(r"(`+)(.+?)\1")
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)")
_HTML = re.compile(r"""<(?:a|img)\s[^>]*?(?:href|src)=["']([^"']+)["']""")


def links(parsed: Parsed) -> list[tuple[int, str]]:
    """(line number, target) of every link outside code: inline, reference definitions, HTML href/src."""
    out = []
    for number, line in enumerate(parsed.prose, 1):
        text = _CODE_SPAN.sub("code", line)
        targets = _LINK.findall(text) + _REFERENCE.findall(text) + _HTML.findall(text)
        out += [(number, target) for target in targets]
    return out


def broken_links(doc: Path) -> list[str]:
    problems = []
    for number, target in links(parse(doc.read_text(encoding="utf-8"))):
        where = f"{doc.relative_to(ROOT)}:{number}: {target}"
        if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", target) or target.startswith("//"):
            continue  # https:, mailto:, ...: not ours to resolve offline
        path_part, _, anchor = target.partition("#")
        path = (doc.parent / unquote(path_part)).resolve() if path_part else doc
        if not path.is_relative_to(ROOT):
            problems.append(f"{where}: points outside the repository")
        elif not path.exists():
            problems.append(f"{where}: no such file")
        elif anchor and path.suffix == ".md" and unquote(anchor).lower() not in anchors(path):
            problems.append(f"{where}: no heading #{anchor} in {path.relative_to(ROOT)}")
    return problems


def _strip_comment(line: str) -> str:
    """The line up to an unquoted `#` that starts a word (a shell comment)."""
    quote, escaped = None, False
    for i, char in enumerate(line):
        if escaped:
            escaped = False
        elif char == "\\" and quote != "'":
            escaped = True
        elif quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def commands(parsed: Parsed) -> list[tuple[int, str, bool]]:
    """(line number, command line, inline?) of every command that starts with a runner: in shell (or unlabelled) code
    blocks, continuation lines joined, and in inline code spans of the prose."""
    out = []
    for language, first, lines in parsed.blocks:
        if language not in SHELL_LANGUAGES:
            continue
        pending, start = "", None
        for offset, line in enumerate(lines):
            line = _strip_comment(line.strip() if pending else re.sub(r"^\s*\$ ", "", line))
            start = first + offset if not pending else start
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1].rstrip() + " "
                continue
            command, pending = (pending + line).strip(), ""
            if RUNNER.match(command):
                out.append((start, command, False))
    for number, line in enumerate(parsed.prose, 1):
        for _, span in _CODE_SPAN.findall(line):
            if RUNNER.match(span.strip()):
                out.append((number, span.strip(), True))
    return out


@dataclass
class Invocation:
    script: str | None  # the repository file it runs (relative to the root), or None for `python -m module`
    module: str | None
    args: list[str]
    files: list[str]  # other repository files it names (an accelerate config, ...)


def invocations(command: str) -> list[Invocation]:
    """What each simple command of a command line runs."""
    tokens = shlex.split(command)
    simple, current = [], []
    for token in tokens:
        if token in ("&&", "||", ";", "|"):
            simple.append(current)
            current = []
        else:
            current.append(token.rstrip(";"))
    simple.append(current)
    out = []
    for words in simple:
        while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
            words = words[1:]
        if not words:
            continue
        runner, rest = words[0].rsplit("/", 1)[-1], words[1:]
        if runner in ("python", "python3") and rest[:1] == ["-m"] and len(rest) > 1:
            if rest[1] in ("torch.distributed.run", "torch.distributed.launch"):
                out.append(_launched(rest[2:]))
            else:
                out.append(Invocation(None, rest[1], rest[2:], []))
        elif runner in ("python", "python3", "bash", "sh"):
            positional = [i for i, word in enumerate(rest) if not word.startswith("-")]
            if positional:
                out.append(Invocation(rest[positional[0]], None, rest[positional[0] + 1 :], []))
        elif runner == "accelerate" and rest[:1] == ["launch"]:
            out.append(_launched(rest[1:]))
        elif runner == "torchrun":
            out.append(_launched(rest))
        elif runner == "axolotl" and rest[:1] == ["train"] and len(rest) > 1:
            out.append(Invocation(rest[1], None, rest[2:], []))
    return out


def _launched(words: list[str]) -> Invocation:
    """A launcher's script is its first `.py` argument; the launcher's own `--config_file` must exist too."""
    files = [words[i + 1] for i, word in enumerate(words[:-1]) if word == "--config_file"]
    scripts = [i for i, word in enumerate(words) if word.endswith(".py")]
    if not scripts:
        return Invocation(None, None, [], files)
    return Invocation(words[scripts[0]], None, words[scripts[0] + 1 :], files)


def missing_files(doc: Path) -> list[str]:
    problems = []
    for number, command, inline in commands(parse(doc.read_text(encoding="utf-8"))):
        where = f"{doc.relative_to(ROOT)}:{number}: {command}"
        try:
            runs = invocations(command)
        except ValueError as error:  # unbalanced quotes
            problems.append(f"{where}: does not parse ({error})")
            continue
        if not runs and not inline:  # inline, `axolotl train` or `python` can be a name in a sentence
            problems.append(f"{where}: names no script")
        for run in runs:
            if run.module is not None:
                top = run.module.split(".")[0]
                if top == "hf_cot" and importlib.util.find_spec(run.module) is None:
                    problems.append(f"{where}: no module {run.module}")
                continue
            for name in ([run.script] if run.script else []) + run.files:
                if "$" in name or name in NOT_OURS:
                    continue
                if not (ROOT / name).is_file():
                    problems.append(f"{where}: no such file {name}")
    return problems


def script_flags(docs: list[Path] | None = None) -> dict[str, dict[str, list[str]]]:
    """{script: {--flag: [where it is used]}} for every command that passes flags to a Python script of the repository
    (the examples, studies/, benchmarks/, tests/scripts/: all HfArgumentParser or argparse scripts)."""
    flags: dict[str, dict[str, list[str]]] = {}
    for doc in DOCUMENTS if docs is None else docs:
        for number, command, _ in commands(parse(doc.read_text(encoding="utf-8"))):
            for run in invocations(command):
                script = FORWARDS.get(run.script or "", run.script)
                if not script or not script.endswith(".py") or not (ROOT / script).is_file():
                    continue
                for word in run.args:
                    if re.match(r"^--[A-Za-z][\w-]*(=.*)?$", word):  # not a quoted "--a b" handed on as a value
                        where = f"{doc.relative_to(ROOT)}:{number}"
                        flags.setdefault(script, {}).setdefault(word.split("=", 1)[0], []).append(where)
    return flags


# --- tests -----------------------------------------------------------------------------------------------------------


def _id(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_the_documents_are_there():
    names = {_id(doc) for doc in DOCUMENTS}
    assert {"README.md", "docs/README.md", "examples/README.md", "RESULTS.md", "BENCHMARKS.md"} <= names


@pytest.mark.parametrize("doc", DOCUMENTS, ids=_id)
def test_relative_links_resolve(doc):
    assert broken_links(doc) == []


@pytest.mark.parametrize("doc", DOCUMENTS, ids=_id)
def test_commands_run_existing_files(doc):
    assert missing_files(doc) == []


def test_readme_shows_the_two_commands():
    """CI and the project's standards call these two exactly as the README writes them."""
    shown = [command for _, command, _ in commands(parse((ROOT / "README.md").read_text(encoding="utf-8")))]
    assert "bash scripts/demo.sh" in shown and "bash scripts/test.sh" in shown


def test_every_docs_page_is_indexed():
    index = (ROOT / "docs" / "README.md").read_text(encoding="utf-8")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for page in (ROOT / "docs").glob("*.md"):
        if page.name != "README.md":
            assert f"]({page.name})" in index, page.name
            assert f"](docs/{page.name})" in readme, page.name


def test_the_checks_catch_what_they_should(tmp_path, monkeypatch):
    """The checker itself: a broken link, a missing anchor, a missing script and an unknown flag are reported."""
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "x.sh").write_text("")
    (tmp_path / "docs" / "page.md").write_text("# A page\n\n## Step 1: `cot_mode` → on\n")
    doc = tmp_path / "README.md"
    doc.write_text(
        "[ok](docs/page.md#step-1-cot_mode--on) [ok](#top) [gone](docs/nope.md) [bad](docs/page.md#nope)\n"
        "[web](https://example.com/x) `[not a link](nowhere.md)`\n\n# Top\n\n"
        "```bash\nbash scripts/x.sh   # [c](gone.md)\npython examples/missing.py --a 1 \\\n    --b\n"
        "accelerate launch --config_file gone.yaml --num_processes 2 scripts/x.sh\n```\n"
        "Inline: `torchrun --nproc_per_node 2 tests/gone.py`.\n"
    )
    assert broken_links(doc) == [
        "README.md:1: docs/nope.md: no such file",
        "README.md:1: docs/page.md#nope: no heading #nope in docs/page.md",
    ]
    assert missing_files(doc) == [
        "README.md:8: python examples/missing.py --a 1 --b: no such file examples/missing.py",
        "README.md:10: accelerate launch --config_file gone.yaml --num_processes 2 scripts/x.sh: no such file gone.yaml",
        "README.md:12: torchrun --nproc_per_node 2 tests/gone.py: no such file tests/gone.py",
    ]
    # flags: `bash scripts/demo.sh --x` hands --x to compare_ce_cot.py; a quoted "--a --b" is a value, not flags
    script = tmp_path / "examples" / "text-classification" / "compare_ce_cot.py"
    script.parent.mkdir(parents=True)
    script.write_text("import argparse\np = argparse.ArgumentParser()\np.add_argument('--good')\np.parse_args()\n")
    (tmp_path / "scripts" / "demo.sh").write_text("")
    doc.write_text(
        "```bash\nbash scripts/demo.sh --good 1 --bad_one=2\n"
        'python examples/text-classification/compare_ce_cot.py --extra "--bad_two x" --good-ish\n```\n'
    )
    flags = script_flags([doc])
    assert flags == {
        "examples/text-classification/compare_ce_cot.py": {
            "--good": ["README.md:2"],
            "--bad_one": ["README.md:2"],
            "--extra": ["README.md:3"],
            "--good-ish": ["README.md:3"],
        }
    }
    assert unknown_flags(flags) == {
        "examples/text-classification/compare_ce_cot.py --bad_one": ["README.md:2"],
        "examples/text-classification/compare_ce_cot.py --extra": ["README.md:3"],
        "examples/text-classification/compare_ce_cot.py --good-ish": ["README.md:3"],
    }


def test_github_slugs():
    """Ids as github.com renders them (checked by hand on the rendered pages of this repository's headings)."""
    assert github_slug("Optimizers (`--optim`) in `alternating` mode") == "optimizers---optim-in-alternating-mode"
    assert github_slug("CUDA (one H100)") == "cuda-one-h100"
    assert (
        github_slug("7. Causal LM: es → en SFT with TRL's `SFTTrainer`, a Llama trained from scratch (CPU box)")
        == "7-causal-lm-es--en-sft-with-trls-sfttrainer-a-llama-trained-from-scratch-cpu-box"
    )


def unknown_flags(flags: dict[str, dict[str, list[str]]]) -> dict[str, list[str]]:
    """{"script --flag": [where it is used]} for the flags a script's `--help` does not list (one `--help` each)."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        helps = dict(zip(flags, pool.map(_help, flags), strict=True))
    return {
        f"{script} {flag}": where
        for script, used in flags.items()
        for flag, where in used.items()
        if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", helps[script])
    }


def _help(script: str) -> str:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.update(HF_EVALUATE_OFFLINE="1", TOKENIZERS_PARALLELISM="false", WANDB_DISABLED="true")
    result = subprocess.run(
        [sys.executable, script, "--help"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, (script, result.stderr[-3000:])
    return result.stdout


@pytest.mark.slow  # one `--help` per script: 1-2 minutes on a 2-core machine (most import torch and transformers)
def test_script_flags_are_accepted():
    flags = script_flags()
    assert set(flags) >= {
        "examples/text-classification/run_classification.py",
        "examples/text-classification/compare_ce_cot.py",  # through `bash scripts/demo.sh --cot_mode ...`
        "examples/translation/run_translation.py",
        "examples/language-modeling/run_sft.py",
        "studies/run_study.py",
    }
    assert unknown_flags(flags) == {}


# --- claims that must agree with the code ----------------------------------------------------------------------------


def _declared() -> dict[str, str]:
    """{package: its requirement} for the dependencies and the `trl` extra of pyproject.toml."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    requirements = project["dependencies"] + project["optional-dependencies"]["trl"]
    return {re.match(r"[A-Za-z0-9_.-]+", r).group(0): r for r in requirements}


def test_readme_states_the_declared_bounds():
    """The README's "Supported:" line and docs/compatibility.md's table show the bounds pyproject.toml declares."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    supported = readme[readme.index("Supported:") :].split("\n\n")[0]
    table = (ROOT / "docs" / "compatibility.md").read_text(encoding="utf-8").split("## Supported versions")[1]
    for name, requirement in _declared().items():
        bounds = requirement[len(name) :].replace(" ", "")
        assert f"`{requirement}`" in supported or f"`{bounds}`" in supported, (name, requirement)
        assert f"`{bounds}`" in table, (name, requirement)


def test_the_demo_environment_is_the_readme_install():
    """`bash scripts/demo.sh` sets up what the README's install line installs (the `examples` extra), not the tests'."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    setup = (ROOT / "scripts" / "setup_env.sh").read_text(encoding="utf-8")
    assert 'pip install -e ".[examples]"' in readme
    assert "bash scripts/setup_env.sh demo" in (ROOT / "scripts" / "demo.sh").read_text(encoding="utf-8")
    start = setup.index('if [ "$PROFILE" = demo ]')
    demo = setup[start : setup.index("\nelse\n", start)]
    assert '-e ".[examples]"' in demo and "test" not in demo


def test_no_pointers_outside_the_repository():
    """Docs, docstrings and comments point to the project's own docs, never to a folder on someone's machine."""
    pattern = re.compile(r"(?<![\w.])/(?:work|home|Users|mnt)/[\w.-]+")
    files = (
        DOCUMENTS
        + sorted(
            p
            for folder in ("hf_cot", "examples", "benchmarks", "scripts", "studies", "tests")
            for p in (ROOT / folder).rglob("*")
            if p.suffix in {".py", ".sh", ".md", ".yml", ".yaml"}
            # run outputs (studies/runs*/: logs and compare's tables name the machine's folders), not docs
            and not any(part.startswith("runs") for part in p.relative_to(ROOT).parts[:2])
        )
    )
    found = [
        f"{path.relative_to(ROOT)}:{number}: {match.group(0)}"
        for path in files
        if path != Path(__file__).resolve()
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
        for match in pattern.finditer(line)
    ]
    assert found == []
