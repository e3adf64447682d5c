"""COTSeq2SeqTrainer on real tokenization: a sentencepiece model trained here, tiny Marian and T5 models."""

import json
import math
import random

import pytest
import sacrebleu
import sentencepiece as spm
import torch
from datasets import Dataset
from transformers import (
    DataCollatorForSeq2Seq,
    MarianTokenizer,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
    T5Config,
    T5ForConditionalGeneration,
)

from hf_cot import COTSeq2SeqTrainer, COTSeq2SeqTrainingArguments, evaluate_complement_entropy
from testing_utils import seq2seq_data, tiny_marian

EN = "the a cat dog house red blue green runs sleeps big small river tree sun moon".split()
ES = "el la gato perro casa rojo azul verde corre duerme grande chico rio arbol sol luna".split()


@pytest.fixture(scope="module")
def parallel_corpus():
    rng = random.Random(0)
    pairs = []
    for _ in range(300):
        idx = [rng.randrange(len(EN)) for _ in range(rng.randint(3, 8))]
        pairs.append({"en": " ".join(EN[i] for i in idx), "es": " ".join(ES[i] for i in idx)})
    return pairs


@pytest.fixture(scope="module")
def sp_tokenizer(parallel_corpus, tmp_path_factory):
    """A real sentencepiece model trained on the fixture corpus, wrapped as a MarianTokenizer."""
    d = tmp_path_factory.mktemp("spm")
    (d / "corpus.txt").write_text("\n".join(p["en"] + "\n" + p["es"] for p in parallel_corpus))
    spm.SentencePieceTrainer.train(
        input=str(d / "corpus.txt"),
        model_prefix=str(d / "sp"),
        vocab_size=48,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_file=str(d / "sp.model"))
    (d / "vocab.json").write_text(json.dumps({sp.id_to_piece(i): i for i in range(sp.get_piece_size())}))
    return MarianTokenizer(
        source_spm=str(d / "sp.model"),
        target_spm=str(d / "sp.model"),
        vocab=str(d / "vocab.json"),
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
    )


def seq2seq_args(out_dir, **kw):
    base = dict(
        output_dir=out_dir,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
        seed=3,
        data_seed=3,
        per_device_train_batch_size=16,
        per_device_eval_batch_size=16,
        max_steps=6,
        logging_steps=3,
        learning_rate=3e-3,
        cot_mode="alternating",
    )
    base.update(kw)
    return COTSeq2SeqTrainingArguments(**base)


def test_trains_with_sentencepiece_and_generates(sp_tokenizer, parallel_corpus, out_dir):
    tok = sp_tokenizer
    model = tiny_marian(vocab_size=len(tok))
    model.config.pad_token_id = model.generation_config.pad_token_id = tok.pad_token_id
    model.config.eos_token_id = model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.decoder_start_token_id = model.config.decoder_start_token_id

    def preprocess(batch):
        return tok(batch["es"], text_target=batch["en"], max_length=24, truncation=True)

    ds = Dataset.from_list(parallel_corpus).map(preprocess, batched=True, remove_columns=["en", "es"])
    train_ds, eval_ds = ds.select(range(260)), ds.select(range(260, 300))

    def compute_metrics(pred):
        preds, labels = pred
        labels = [[t if t != -100 else tok.pad_token_id for t in row] for row in labels]
        hyp = tok.batch_decode(preds, skip_special_tokens=True)
        ref = tok.batch_decode(labels, skip_special_tokens=True)
        return {"bleu": sacrebleu.corpus_bleu(hyp, [ref]).score}

    trainer = COTSeq2SeqTrainer(
        model=model,
        args=seq2seq_args(out_dir, predict_with_generate=True, generation_max_length=12),
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        data_collator=DataCollatorForSeq2Seq(tok, model=model),
        processing_class=tok,
        compute_metrics=compute_metrics,
    )
    trainer.train()
    metrics = trainer.evaluate()
    assert math.isfinite(metrics["eval_loss"]) and 0.0 <= metrics["eval_bleu"] <= 100.0
    lines = [h for h in trainer.state.log_history if "loss" in h]
    assert len(lines) == 2
    for line in lines:
        assert 0 < line["complement_entropy"] <= math.log(len(tok) - 1) + 1e-6
    assert trainer.complement_steps == 6


def test_complement_forward_reuses_the_decoder_inputs(sp_tokenizer, parallel_corpus, out_dir):
    tok = sp_tokenizer
    model = tiny_marian(vocab_size=len(tok))
    seen = []  # training forwards only (the first batch's check against the model's own loss runs without grad)

    def record(module, args, kwargs):
        if torch.is_grad_enabled():
            seen.append(kwargs["decoder_input_ids"].clone())

    model.register_forward_pre_hook(record, with_kwargs=True)
    ds = Dataset.from_list(parallel_corpus[:64]).map(
        lambda b: tok(b["es"], text_target=b["en"], max_length=24, truncation=True),
        batched=True,
        remove_columns=["en", "es"],
    )
    trainer = COTSeq2SeqTrainer(
        model=model,
        args=seq2seq_args(out_dir, max_steps=3, per_device_train_batch_size=8, gradient_accumulation_steps=2),
        train_dataset=ds,
        data_collator=DataCollatorForSeq2Seq(tok, model=model),
    )
    trainer.train()
    # Per optimizer step: 2 CE forwards (GA 2), then 2 complement forwards over the same micro-batches.
    assert len(seen) == 3 * 4
    for step in range(3):
        ce, comp = seen[4 * step : 4 * step + 2], seen[4 * step + 2 : 4 * step + 4]
        for a, b in zip(ce, comp, strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize("arch", ["marian", "t5"])
def test_decoder_inputs_built_from_labels_match_the_models_own(arch, out_dir):
    """Batches without decoder_input_ids: our CE must equal the model's own loss, computed from its own shift."""
    if arch == "marian":
        model = tiny_marian()
    else:
        torch.manual_seed(0)
        model = T5ForConditionalGeneration(
            T5Config(
                vocab_size=61,
                d_model=32,
                d_kv=8,
                d_ff=37,
                num_layers=1,
                num_heads=2,
                dropout_rate=0.0,
                pad_token_id=0,
                eos_token_id=1,
                decoder_start_token_id=0,
            )
        )
    model.eval()
    rows = seq2seq_data(n=6)
    batch = {k: torch.stack([r[k] for r in rows]) for k in rows[0]}
    trainer = COTSeq2SeqTrainer(model=model, args=seq2seq_args(out_dir, cot_mode="joint", complement_weight=0.0))
    with torch.no_grad():
        ours = trainer.compute_loss(model, dict(batch))
        theirs = model(**batch).loss
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)
    # And training runs end to end on the same kind of batches in alternating mode.
    trainer = COTSeq2SeqTrainer(model=model, args=seq2seq_args(out_dir, max_steps=2), train_dataset=rows)
    trainer.train()
    assert trainer.complement_steps == 2


def test_evaluate_complement_entropy_restores_the_mode_when_it_fails(out_dir):
    model = tiny_marian()
    trainer = COTSeq2SeqTrainer(model=model, args=seq2seq_args(out_dir, cot_mode="joint"))
    model.train()
    unlabeled = Dataset.from_list([{k: v for k, v in r.items() if k != "labels"} for r in seq2seq_data(n=4)])
    with pytest.raises(ValueError, match="no 'labels' key"):
        evaluate_complement_entropy(trainer, unlabeled)
    assert model.training


@pytest.mark.parametrize("cot_mode", ["plain", "off", "alternating"])
def test_evaluate_complement_entropy_matches_a_naive_token_average(cot_mode, out_dir):
    """Teacher-forced test-set complement entropy vs a float64 loop over every valid target token, by hand."""
    model = tiny_marian()
    rows = seq2seq_data(n=21)  # not a multiple of the batch size: the last batch is short
    if cot_mode == "plain":  # the CE baseline of the examples: transformers' own trainer
        args = Seq2SeqTrainingArguments(output_dir=out_dir, report_to=[], use_cpu=True, per_device_eval_batch_size=4)
        trainer = Seq2SeqTrainer(model=model, args=args)
    else:
        trainer = COTSeq2SeqTrainer(
            model=model, args=seq2seq_args(out_dir, cot_mode=cot_mode, per_device_eval_batch_size=4)
        )
    got = evaluate_complement_entropy(trainer, Dataset.from_list(rows), metric_key_prefix="predict")

    model.eval()
    entropies = []
    with torch.no_grad():
        for row in rows:
            out = model(
                input_ids=row["input_ids"][None],
                attention_mask=row["attention_mask"][None],
                labels=row["labels"][None],
            )  # the model's own shift of labels into decoder inputs
            for logits, gold in zip(out.logits[0].double(), row["labels"].tolist(), strict=True):
                if gold == -100:
                    continue
                p = torch.softmax(logits, -1)
                q = torch.cat([p[:gold], p[gold + 1 :]]) / (1 - p[gold])
                entropies.append(float(-(q * q.log()).sum()))
    expected = sum(entropies) / len(entropies)
    vocab = model.config.vocab_size
    assert got["predict_complement_entropy"] == pytest.approx(expected, rel=1e-5)
    assert got["predict_normalized_complement_entropy"] == pytest.approx(expected / math.log(vocab - 1), rel=1e-5)
