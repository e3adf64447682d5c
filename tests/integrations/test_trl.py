"""`hf_cot.trl`: COT inside TRL's `SFTTrainer`. The COT modes must report what `SFTTrainer` reports (its loss, its
`entropy` / `mean_token_accuracy` / `num_tokens`, computed there by its fused LM head) on the same weights, keep
its data handling (completion-only loss, packing, PEFT), and `cot_mode="off"` must be `SFTTrainer` itself."""

import subprocess
import sys

import pytest
import torch
from packaging import version

from testing_utils import prompt_completion, tiny_llama, tiny_moe, word_tokenizer

trl = pytest.importorskip("trl")

from transformers import TrainerCallback  # noqa: E402

from hf_cot import COTArgumentsMixin  # noqa: E402
from hf_cot.trl import COTSFTConfig, COTSFTTrainer  # noqa: E402

METRICS = ["loss", "entropy", "mean_token_accuracy", "num_tokens"]
TRL_AVERAGES_AUX = version.parse(trl.__version__).release >= (1, 16)


@pytest.fixture(scope="module")
def tokenizer():
    return word_tokenizer()


def _config(out_dir, cls, **kw):
    base = dict(
        output_dir=out_dir, report_to=[], use_cpu=True, disable_tqdm=True, save_strategy="no", seed=2, data_seed=2,
        per_device_train_batch_size=4, max_steps=3, logging_steps=1, max_length=16, bf16=False,
        gradient_checkpointing=False, dataset_num_proc=None,
    )  # fmt: skip
    base.update(kw)
    return cls(**base)


def _pair(out_dir, tokenizer, mode, data=None, make_model=tiny_llama, **kw):
    """``(SFTTrainer, COTSFTTrainer)`` over two fresh copies of one model and the same data (also the VLM tests')."""
    data = data if data is not None else prompt_completion()
    plain = trl.SFTTrainer(model=make_model(), args=_config(out_dir + "/sft", trl.SFTConfig, **kw),
                           train_dataset=data, processing_class=tokenizer)  # fmt: skip
    cot = COTSFTTrainer(model=make_model(), args=_config(out_dir + "/cot", COTSFTConfig, cot_mode=mode, **kw),
                        train_dataset=data, processing_class=tokenizer)  # fmt: skip
    return plain, cot


def _lines(trainer, prefix=""):
    return [
        {k: h[prefix + k] for k in METRICS if prefix + k in h}
        for h in trainer.state.log_history
        if prefix + "loss" in h
    ]


def test_off_is_sft_trainer(tokenizer, out_dir):
    plain, cot = _pair(out_dir, tokenizer, "off", learning_rate=1e-3)
    plain.train()
    cot.train()
    assert _lines(cot) == _lines(plain)
    for p, q in zip(plain.model.parameters(), cot.model.parameters(), strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize("mode", ["joint", "guided", "alternating"])
@pytest.mark.parametrize("ga", [1, 2])
def test_cot_modes_report_what_sft_trainer_reports(tokenizer, out_dir, mode, ga):
    """lr 0: the same weights at every step, so each logged number must be SFTTrainer's (GA 2: token averaging over
    the window, as TRL's num_items_in_batch does; completion-only loss: the prompts are -100)."""
    plain, cot = _pair(out_dir, tokenizer, mode, optim="sgd", learning_rate=0.0, gradient_accumulation_steps=ga)
    plain.train()
    cot.train()
    assert cot._cot_fused  # the COT modes' own fused head in place of TRL's: no [tokens, vocabulary] logits
    got, want = _lines(cot), _lines(plain)
    assert len(got) == len(want) == 3
    for g, w in zip(got, want, strict=True):
        assert g.keys() == w.keys() == set(METRICS)
        for key in METRICS:
            assert g[key] == pytest.approx(w[key], abs=1e-5), (key, g, w)
    cot_line = next(h for h in cot.state.log_history if "loss" in h)
    assert "complement_entropy" in cot_line and "complement_loss" in cot_line
    eval_data = prompt_completion(n=7, seed=1)
    e_plain, e_cot = plain.evaluate(eval_data), cot.evaluate(eval_data)
    for key in ("eval_loss", "eval_entropy", "eval_mean_token_accuracy"):
        assert e_cot[key] == pytest.approx(e_plain[key], abs=1e-5), key
    assert e_cot["eval_complement_entropy"] > 0


def test_top1_ties_count_as_sft_trainer_counts_them(tokenizer, out_dir):
    """All logits equal (a zero head): argmax, and so TRL's mean_token_accuracy, takes the first index (token 0);
    the fused head must count ties the same way (it used to count a tie as wrong: accuracy 0)."""
    plain, cot = _pair(out_dir, tokenizer, "joint", optim="sgd", learning_rate=0.0, max_steps=1)
    for trainer in (plain, cot):
        torch.nn.init.zeros_(trainer.model.lm_head.weight)
        trainer.train()
    assert cot._cot_fused
    (got,), (want,) = _lines(cot), _lines(plain)
    assert got["mean_token_accuracy"] == pytest.approx(want["mean_token_accuracy"], abs=1e-6)


@pytest.mark.parametrize("ga", [1, 2])
def test_moe_router_loss_is_reported_as_sft_trainer_reports_it(tokenizer, out_dir, ga):
    """A mixture-of-experts model: TRL adds router_aux_loss_coef x aux_loss (averaged over the accumulation window)
    to its loss and logs aux_loss; the COT modes must report the same numbers on the same weights."""
    kw = dict(optim="sgd", learning_rate=0.0, gradient_accumulation_steps=ga, max_steps=2)
    plain = trl.SFTTrainer(model=tiny_moe("mixtral"), args=_config(out_dir + "/sft", trl.SFTConfig, **kw),
                           train_dataset=prompt_completion(), processing_class=tokenizer)  # fmt: skip
    cot = COTSFTTrainer(model=tiny_moe("mixtral"), args=_config(out_dir + "/cot", COTSFTConfig, cot_mode="joint", **kw),
                        train_dataset=prompt_completion(), processing_class=tokenizer)  # fmt: skip
    plain.train()
    cot.train()
    assert cot._cot_fused
    want = [h for h in plain.state.log_history if "loss" in h]
    got = [h for h in cot.state.log_history if "loss" in h]
    assert len(got) == len(want) == 2
    # TRL before 1.16 (1.9 checked) adds the router loss to every micro-batch's loss undivided; hf-cot, like TRL 1.16,
    # averages it over the accumulation window: the losses agree at GA 1 only there.
    keys = ("loss", "aux_loss", "mean_token_accuracy") if ga == 1 or TRL_AVERAGES_AUX else ("aux_loss",)
    for g, w in zip(got, want, strict=True):
        assert w["aux_loss"] > 0
        for key in keys:
            assert g[key] == pytest.approx(w[key], abs=1e-5), (key, g, w)


def test_one_metrics_store_shared_with_trl(tokenizer, out_dir):
    """The COT values go into TRL's own store (`_metrics[mode][key]`, one entry per step) and out through its log."""
    cot = COTSFTTrainer(model=tiny_llama(), args=_config(out_dir, COTSFTConfig, cot_mode="joint", logging_steps=100,
                        max_steps=2), train_dataset=prompt_completion(), processing_class=tokenizer)  # fmt: skip
    seen = []
    cot.add_callback(type("Peek", (TrainerCallback,), {"on_step_end": lambda self, *a, **k: seen.append(
        {key: list(values) for key, values in cot._metrics["train"].items()})})())  # fmt: skip
    cot.train()  # no log line within the 2 steps: the store keeps every step's entry until TRL's final log
    assert len(seen[-1]["complement_entropy"]) == len(seen[-1]["complement_loss"]) == 2  # one entry a step
    assert len(seen[-1]["mean_token_accuracy"]) == 2 and not hasattr(cot, "_cot_sums")
    summary = cot.state.log_history[-1]  # TRL's log averaged both kinds of entries into it
    assert summary["complement_entropy"] == pytest.approx(sum(seen[-1]["complement_entropy"]) / 2)
    assert "mean_token_accuracy" in summary


def test_packing_reports_what_sft_trainer_reports(tokenizer, out_dir):
    plain, cot = _pair(out_dir, tokenizer, "joint", optim="sgd", learning_rate=0.0, packing=True)
    plain.train()
    cot.train()
    for g, w in zip(_lines(cot), _lines(plain), strict=True):
        for key in METRICS:
            assert g[key] == pytest.approx(w[key], abs=1e-5), (key, g, w)


@pytest.mark.parametrize("packing", [False, True])
def test_fused_head_trains_like_the_materialized_logits(tokenizer, out_dir, packing):
    """The same weights and the same TRL metrics after training with cot_fused_lm_head on and off."""
    runs = [
        COTSFTTrainer(
            model=tiny_llama(),
            args=_config(
                f"{out_dir}/{fused}", COTSFTConfig, learning_rate=3e-3, packing=packing, cot_fused_lm_head=fused
            ),
            train_dataset=prompt_completion(),
            processing_class=tokenizer,
        )  # fmt: skip
        for fused in (None, False)
    ]
    for trainer in runs:
        trainer.train()
    fused, plain = runs
    assert fused._cot_fused and not plain._cot_fused
    for p, q in zip(fused.model.parameters(), plain.model.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-5, rtol=0)
    for g, w in zip(_lines(fused), _lines(plain), strict=True):
        for key in METRICS:
            assert g[key] == pytest.approx(w[key], abs=1e-5), (key, g, w)


def test_lora_alternating_trains_only_the_adapters(tokenizer, out_dir):
    peft = pytest.importorskip("peft")
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    trainer = COTSFTTrainer(model=tiny_llama(), args=_config(out_dir, COTSFTConfig, cot_mode="alternating"),
                            train_dataset=prompt_completion(), processing_class=tokenizer, peft_config=config)  # fmt: skip
    trainer.train()
    trainable = {id(p) for p in trainer.model.parameters() if p.requires_grad}
    assert trainable and {id(p) for g in trainer.complement_optimizer.param_groups for p in g["params"]} == trainable
    assert trainer.complement_steps == 3


@pytest.mark.parametrize(
    "kw,match", [({"use_liger_kernel": True}, "use_liger_kernel"), ({"loss_type": "dft"}, "loss_type")]
)
def test_what_cannot_work_is_refused_by_the_config(out_dir, kw, match):
    """Refused when the configuration is built, before any trainer patches or tags a model; 'off' accepts it."""
    with pytest.raises(ValueError, match=match):
        _config(out_dir, COTSFTConfig, cot_mode="joint", **kw)
    if "loss_type" in kw:
        assert _config(out_dir, COTSFTConfig, cot_mode="off", **kw).loss_type == "dft"
        # "chunked_nll" is the plain NLL computed in chunks (TRL 1.9's default; a deprecated alias of "nll" in 1.16)
        assert _config(out_dir, COTSFTConfig, cot_mode="joint", loss_type="chunked_nll").cot_mode == "joint"


def test_no_config_or_a_plain_one_becomes_a_cot_sft_config_as_sft_trainer_does(tokenizer, tmp_path, monkeypatch):
    """SFTTrainer builds `SFTConfig("<model>-SFT")` when given none and converts a `TrainingArguments`; the COT trainer
    builds / converts to `COTSFTConfig` the same way (values kept, COT fields at their defaults)."""
    from transformers import TrainingArguments

    monkeypatch.chdir(tmp_path)  # the default output_dir is relative
    out_dir = str(tmp_path / "out")
    model = tiny_llama()
    model.config._name_or_path = "org/tiny-llama"

    def build(cls, model):
        try:
            return cls(model=model, train_dataset=prompt_completion(), processing_class=tokenizer), None
        except ValueError as err:  # SFTConfig's defaults want bf16, which a CPU without it refuses
            return None, str(err)

    plain, plain_error = build(trl.SFTTrainer, model)
    model = tiny_llama()
    model.config._name_or_path = "org/tiny-llama"
    cot, cot_error = build(COTSFTTrainer, model)
    assert cot_error == plain_error
    if plain is not None:
        assert type(cot.args) is COTSFTConfig and cot.args.cot_mode == "joint"
        assert cot.args.output_dir == plain.args.output_dir and plain.args.output_dir.endswith("tiny-llama-SFT")

    given = TrainingArguments(output_dir=out_dir, report_to=[], learning_rate=0.0123, seed=7, use_cpu=True)
    plain = trl.SFTTrainer(
        model=tiny_llama(), args=given, train_dataset=prompt_completion(), processing_class=tokenizer
    )
    cot = COTSFTTrainer(model=tiny_llama(), args=given, train_dataset=prompt_completion(), processing_class=tokenizer)
    assert type(cot.args) is COTSFTConfig
    cot_fields = set(COTArgumentsMixin.__dataclass_fields__)
    theirs, ours = plain.args.to_dict(), {k: v for k, v in cot.args.to_dict().items() if k not in cot_fields}
    assert ours == theirs


def test_off_writes_sft_trainers_model_card(tokenizer, out_dir):
    cards = []
    for cls, config_cls in ((trl.SFTTrainer, trl.SFTConfig), (COTSFTTrainer, COTSFTConfig)):
        kw = {"cot_mode": "off"} if config_cls is COTSFTConfig else {}
        path = f"{out_dir}/{cls.__name__}"
        trainer = cls(model=tiny_llama(), args=_config(path, config_cls, max_steps=1, **kw),
                      train_dataset=prompt_completion(), processing_class=tokenizer)  # fmt: skip
        trainer.create_model_card(model_name="tiny")
        cards.append(open(f"{path}/README.md", encoding="utf-8").read())
    assert cards[0] == cards[1]


def test_model_card_has_trl_and_cot_tags_and_the_paper(tokenizer, out_dir):
    trainer = COTSFTTrainer(model=tiny_llama(), args=_config(out_dir, COTSFTConfig, max_steps=1),
                            train_dataset=prompt_completion(), processing_class=tokenizer)  # fmt: skip
    trainer.train()
    trainer.create_model_card(model_name="tiny")
    card = open(f"{out_dir}/README.md", encoding="utf-8").read()
    for tag in ("trl", "sft", "hf-cot", "complement-objective-training"):
        assert tag in card
    assert "https://arxiv.org/abs/1903.01182" in card and "## Complement Objective Training" in card
    # TRL's method/citation slots stay SFT's: the COT paper is not presented as SFT's, its BibTeX appears once
    assert "a method introduced in" not in card and card.count("@inproceedings{chen2019complement") == 1
    assert "pypi.org/project/hf-cot" not in card  # not on PyPI: no link to nothing


def test_a_clear_import_error_without_trl():
    code = (
        "import sys; sys.modules['trl'] = None\ntry:\n    import hf_cot.trl\nexcept ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300).stdout
    assert "hf-cot[trl]" in out
