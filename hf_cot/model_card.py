"""The paper, the tags and the model-card section the COT trainers add (TRL's `_tag_names` / `_paper` convention)."""

from __future__ import annotations

import os

TAGS = ["hf-cot", "complement-objective-training"]
ARXIV_ID = "1903.01182"
CITATION = """\
@inproceedings{chen2019complement,
    title     = {{Complement Objective Training}},
    author    = {Hao-Yun Chen and Pei-Hsin Wang and Chun-Hao Liu and Shih-Chieh Chang and Jia-Yu Pan and
                 Yu-Ting Chen and Wei Wei and Da-Cheng Juan},
    booktitle = {International Conference on Learning Representations},
    year      = {2019},
    url       = {https://openreview.net/forum?id=HyM7AiA5YX}
}"""
PAPER = {"title": "Complement Objective Training", "id": ARXIV_ID, "citation": CITATION}


def merge_tags(tags) -> list[str]:
    """The caller's tags (a string, a list or None) plus ours, without duplicates, order kept."""
    tags = [tags] if isinstance(tags, str) else list(tags or [])
    return tags + [t for t in TAGS if t not in tags]


def project_link() -> str:
    """``[hf-cot](url)`` with the first ``[project.urls]`` entry of the installed package, or plain ``hf-cot`` when it
    declares none (hf-cot is not on PyPI, so a PyPI link would point to nothing)."""
    from importlib import metadata

    try:
        urls = metadata.metadata("hf-cot").get_all("Project-URL") or []
    except metadata.PackageNotFoundError:
        urls = []
    for entry in urls:  # "Label, https://..."
        url = entry.split(",", 1)[-1].strip()
        if url.startswith(("https://", "http://")):
            return f"[hf-cot]({url})"
    return "hf-cot"


def add_cot_section(card_path: str, cot_mode: str) -> None:
    """Append the COT section (paper link, what the losses mean, bibtex) to a model card, once."""
    if not os.path.isfile(card_path):
        return
    with open(card_path, encoding="utf-8") as f:
        card = f.read()
    if "## Complement Objective Training" in card:  # written once (TRL rewrites the card at every checkpoint)
        return
    section = (
        f"\n## Complement Objective Training\n\nTrained with {project_link()} "
        f"(`cot_mode={cot_mode!r}`), which implements [Complement Objective Training]"
        f"(https://arxiv.org/abs/{ARXIV_ID}) (Chen et al., ICLR 2019). The losses reported above are "
        f"the plain cross-entropy, comparable with a run of the plain Trainer. Cite the method as:\n\n"
        f"```bibtex\n{CITATION}\n```\n"
    )
    with open(card_path, "w", encoding="utf-8") as f:
        f.write(card.rstrip("\n") + "\n" + section)
