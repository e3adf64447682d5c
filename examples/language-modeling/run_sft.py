#!/usr/bin/env python
"""Supervised fine-tuning of a causal language model with TRL's `SFTTrainer` and Complement Objective Training
(the shape of the HF example scripts: `ModelArguments` / `DataTrainingArguments` + `COTSFTConfig` through
`HfArgumentParser`, from the command line or one .json file; runs unchanged under `accelerate launch`).

With no model or data argument it trains the embedded offline default: Spanish -> English Bible verses (Reina-Valera
1909 / World English Bible, public domain, committed in examples/translation/data/, split by book) as
prompt/completion pairs (`"Spanish: {es}\\nEnglish:"` -> `" {en}"`, loss on the completion only, as TRL does for
prompt/completion data), with a small Llama trained from scratch (4 layers, width 256, about 4M parameters) over a
byte-level BPE vocabulary of 3,000 tokens that the script trains on the training split (`tokenizers`; cached in
`<output_dir>/bpe_tokenizer`):

    python examples/language-modeling/run_sft.py --output_dir runs/sft_bible --do_train --do_eval --do_predict \
        --max_steps 300 --per_device_train_batch_size 16 --learning_rate 1e-3 --warmup_steps 30 \
        --max_eval_samples 300 --max_predict_samples 500 --num_generate_samples 100 --report_to none --bf16 false

(`--bf16 false` on a CPU: TRL's `SFTConfig` defaults to bf16.) studies/run_study.py's `sft` plan is the CE-vs-COT
study of this script (a smaller model, 200 steps; RESULTS.md).

Why from scratch and not a warm start: the only causal-LM-capable checkpoint shipped offline is all-MiniLM-L6-v2
(as a `BertLMHeadModel` decoder, 22M parameters), whose 30,522-token English WordPiece head cannot spell Spanish
well and makes every step and every complement distribution ten times wider. Measured on the 2-core CPU box (one
thread, batch 16 x 96 tokens, forward + backward + AdamW): 1.4 s/step for this Llama (4M parameters, 3k vocabulary)
against 9.0 s/step for the MiniLM decoder. A from-scratch model over its own bilingual BPE learns the task's surface
statistics within a CPU budget, which is what a CE-vs-COT comparison needs; with a GPU or internet, pass any
`--model_name_or_path`.

Evaluation (`--do_eval` on the validation split, `--do_predict` on the test split): `loss` (the token-averaged CE of
the completion in every mode), `perplexity` = exp(loss), TRL's `mean_token_accuracy` (next-token accuracy of the
completion) and `entropy`, the teacher-forced `complement_entropy` (`hf_cot.evaluate_complement_entropy`, the same
computation for CE and COT models), and BLEU / chrF (`hf_cot.metrics` "translation_metrics", sacreBLEU) of greedy
completions generated for the first `--num_generate_samples` prompts (`--max_new_tokens`).

Any Hub model or dataset works as usual (`--model_name_or_path Qwen/Qwen2.5-0.5B --dataset_name
trl-lib/Capybara`): the data may be prompt/completion, conversational (`messages`), plain text (`text`), or
translation pairs (a `translation` column; pass `--source_lang --target_lang`), also from local json(l) files.
BLEU/chrF are computed for plain-text prompt/completion data only.

COT vs the plain SFTTrainer: the script differs from a plain-TRL script in two names (`COTSFTConfig` for
`SFTConfig`, `COTSFTTrainer` for `SFTTrainer`) plus their import; `--cot_mode off` is `SFTTrainer` itself, the
cross-entropy baseline.
"""

import json
import logging
import math
import os
import sys
from dataclasses import dataclass, field

import datasets
import torch
import transformers
from datasets import load_dataset
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, HfArgumentParser, set_seed
from transformers.trainer_utils import get_last_checkpoint

from hf_cot import evaluate_complement_entropy
from hf_cot import metrics as cot_metrics

from hf_cot.trl import COTSFTConfig, COTSFTTrainer  # isort: skip

logger = logging.getLogger(__name__)

TRANSLATION_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "translation")
LANGUAGE_NAMES = {"es": "Spanish", "en": "English", "de": "German", "fr": "French", "ro": "Romanian"}
SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}


@dataclass
class ModelArguments:
    """Which model/config/tokenizer to fine-tune, or the size of the from-scratch default."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Hub model id or local folder of a causal LM. Default: a small Llama trained from scratch with a "
            "byte-level BPE tokenizer trained on the training split (offline)."
        },
    )
    config_name: str | None = field(
        default=None, metadata={"help": "Config name or path; without --model_name_or_path: train it from scratch."}
    )
    tokenizer_name: str | None = field(default=None, metadata={"help": "Tokenizer name or path, if not the model's."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where to store models and datasets from the Hub."})
    model_revision: str = field(default="main", metadata={"help": "Model version (branch, tag or commit id)."})
    token: str | None = field(default=None, metadata={"help": "Hub token, for private models and datasets."})
    dtype: str | None = field(
        default=None, metadata={"help": "dtype to load a pretrained model in ('auto', 'bfloat16', ...)."}
    )
    bpe_vocab_size: int = field(default=3000, metadata={"help": "From-scratch default: BPE vocabulary size."})
    hidden_size: int = field(default=256, metadata={"help": "From-scratch default: model width."})
    num_hidden_layers: int = field(default=4, metadata={"help": "From-scratch default: decoder layers."})
    num_attention_heads: int = field(default=4, metadata={"help": "From-scratch default: attention heads."})
    intermediate_size: int = field(default=704, metadata={"help": "From-scratch default: MLP width."})


@dataclass
class DataTrainingArguments:
    """What data to train and evaluate on. With no dataset or file, the embedded es->en Bible corpus is used."""

    dataset_name: str | None = field(default=None, metadata={"help": "Dataset name on the Hub (datasets library)."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Configuration name of the dataset."})
    train_file: str | None = field(default=None, metadata={"help": "A json(l) training file."})
    validation_file: str | None = field(default=None, metadata={"help": "A json(l) file for --do_eval."})
    test_file: str | None = field(default=None, metadata={"help": "A json(l) file for --do_predict."})
    source_lang: str | None = field(default=None, metadata={"help": "Translation data: source key (default 'es')."})
    target_lang: str | None = field(default=None, metadata={"help": "Translation data: target key (default 'en')."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Truncate the training set."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Truncate the validation set."})
    max_predict_samples: int | None = field(default=None, metadata={"help": "Truncate the test set."})
    num_generate_samples: int = field(
        default=100,
        metadata={"help": "Prompts (the first ones of each scored split) to complete for BLEU/chrF; 0: none."},
    )
    max_new_tokens: int = field(default=48, metadata={"help": "Greedy generation length for BLEU/chrF."})
    generation_batch_size: int = field(default=32, metadata={"help": "Prompts per generate() call."})

    def __post_init__(self):
        if self.dataset_name is not None and self.train_file is not None:
            raise ValueError("Pass either --dataset_name or data files, not both.")
        for path in (self.train_file, self.validation_file, self.test_file):
            if path is not None and not path.endswith((".json", ".jsonl")):
                raise ValueError(f"Data files must be .json or .jsonl, got {path}")
        self.uses_default_data = self.dataset_name is None and not any(
            (self.train_file, self.validation_file, self.test_file)
        )
        if self.uses_default_data:
            self.source_lang, self.target_lang = self.source_lang or "es", self.target_lang or "en"


# ----------------------------------------------------------------------------------------------------------- data


def translation_prompt(source: str, source_lang: str, target_lang: str) -> str:
    src, tgt = (LANGUAGE_NAMES.get(lang, lang) for lang in (source_lang, target_lang))
    return f"{src}: {source}\n{tgt}:"


def load_raw_datasets(model_args, data_args) -> datasets.DatasetDict:
    """The splits as given, with translation pairs turned into prompt/completion (`" {target}"`)."""
    if data_args.dataset_name is not None:
        raw = load_dataset(
            data_args.dataset_name,
            data_args.dataset_config_name,
            cache_dir=model_args.cache_dir,
            token=model_args.token,
        )
    elif not data_args.uses_default_data:
        files = {"train": data_args.train_file, "validation": data_args.validation_file, "test": data_args.test_file}
        raw = load_dataset("json", data_files={k: v for k, v in files.items() if v}, cache_dir=model_args.cache_dir)
    else:
        sys.path.insert(0, TRANSLATION_DIR)
        from bible_data import load_bible_splits  # the embedded default lives with the translation example

        raw = load_bible_splits()
    if "translation" not in next(iter(raw.values())).column_names:
        return raw
    src, tgt = data_args.source_lang, data_args.target_lang
    if src is None or tgt is None:
        raise ValueError("Translation data: pass --source_lang and --target_lang (keys of the `translation` column).")

    def to_prompt_completion(example):
        pair = example["translation"]
        return {"prompt": translation_prompt(pair[src], src, tgt), "completion": " " + pair[tgt]}

    return datasets.DatasetDict(
        {
            name: split.map(to_prompt_completion, remove_columns=split.column_names, desc=f"Formatting {name}")
            for name, split in raw.items()
        }
    )


def select(raw, split, limit):
    if split not in raw:
        raise ValueError(f"The data has no {split!r} split (it has {list(raw)}).")
    dataset = raw[split]
    return dataset.select(range(min(limit, len(dataset)))) if limit is not None else dataset


def training_texts(dataset):
    """Plain strings of a split, to train the BPE tokenizer on."""
    for row in dataset:
        if "prompt" in row and isinstance(row["prompt"], str):
            yield row["prompt"] + row["completion"]
        elif "text" in row:
            yield row["text"]
        elif "messages" in row:
            yield "\n".join(m["content"] for m in row["messages"] if isinstance(m.get("content"), str))
        else:
            raise ValueError(f"Cannot train a tokenizer on rows with columns {sorted(row)}: pass --tokenizer_name.")


# ------------------------------------------------------------------------------------------------ model, tokenizer


def train_bpe_tokenizer(texts, vocab_size: int, path: str):
    """A byte-level BPE tokenizer (GPT-2 style, with <s> prepended) trained on `texts`; loaded from `path` if it was
    trained there before on the same texts with the same vocabulary size."""
    import hashlib

    from transformers import PreTrainedTokenizerFast

    texts = list(texts)
    digest = hashlib.sha256("\x00".join(texts).encode()).hexdigest()
    key = {"vocab_size": vocab_size, "num_texts": len(texts), "sha256": digest}
    key_file = os.path.join(path, "bpe_training.json")
    if os.path.isfile(key_file) and os.path.isfile(os.path.join(path, "tokenizer.json")):
        with open(key_file) as f:
            if json.load(f) == key:
                logger.info(f"Loading the cached BPE tokenizer from {path}")
                return PreTrainedTokenizerFast.from_pretrained(path)
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    specials = list(SPECIAL_TOKENS.values())
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    bos = SPECIAL_TOKENS["bos_token"]
    bpe.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, bpe.token_to_id(bos))]
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, model_max_length=512, **SPECIAL_TOKENS)
    tokenizer.save_pretrained(path)  # written by every process under DDP: the same file, trained on the same data
    with open(key_file, "w") as f:
        json.dump(key, f)
    return tokenizer


def load_model_and_tokenizer(model_args, train_dataset, training_args):
    """A Hub/local causal LM and its tokenizer, or the from-scratch default (Llama + BPE trained on `train_dataset`)."""
    common = {"cache_dir": model_args.cache_dir, "revision": model_args.model_revision, "token": model_args.token}
    name = model_args.model_name_or_path
    tokenizer_name = model_args.tokenizer_name or name
    if tokenizer_name is not None:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_name, **common)
    else:
        if train_dataset is None:
            raise ValueError("The from-scratch default trains its tokenizer on the training split: pass --do_train.")
        path = os.path.join(training_args.output_dir, "bpe_tokenizer")
        with training_args.main_process_first(desc="training the BPE tokenizer"):
            tokenizer = train_bpe_tokenizer(training_texts(train_dataset), model_args.bpe_vocab_size, path)
    if name is not None:
        kwargs = {"dtype": model_args.dtype} if model_args.dtype else {}
        model = AutoModelForCausalLM.from_pretrained(name, **common, **kwargs)
    else:
        if model_args.config_name is not None:
            config = AutoConfig.from_pretrained(model_args.config_name, **common)
        else:
            config = transformers.LlamaConfig(
                vocab_size=len(tokenizer),
                hidden_size=model_args.hidden_size,
                num_hidden_layers=model_args.num_hidden_layers,
                num_attention_heads=model_args.num_attention_heads,
                intermediate_size=model_args.intermediate_size,
                max_position_embeddings=tokenizer.model_max_length,
                tie_word_embeddings=True,
            )
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            setattr(config, key, getattr(tokenizer, key))
        model = AutoModelForCausalLM.from_config(config)
        n = sum(p.numel() for p in model.parameters())
        logger.info(
            f"Training a {type(model).__name__} from scratch: {n / 1e6:.2f}M parameters, vocab {len(tokenizer)}"
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


# ------------------------------------------------------------------------------------------------------ evaluation


@torch.no_grad()
def generate_completions(model, tokenizer, prompts, max_new_tokens, batch_size) -> list[str]:
    """Greedy completions of plain-text prompts (left-padded batches), decoded without special tokens."""
    was_training, side = model.training, tokenizer.padding_side
    model.eval()
    tokenizer.padding_side = "left"
    outputs = []
    try:
        for start in range(0, len(prompts), batch_size):
            batch = tokenizer(
                prompts[start : start + batch_size], return_tensors="pt", padding=True, return_token_type_ids=False
            ).to(model.device)
            generated = model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            new = generated[:, batch["input_ids"].shape[1] :]
            outputs += [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return outputs


def score_split(trainer, dataset, prefix, data_args, tokenizer) -> dict:
    """Loss, perplexity, token accuracy, complement entropy and (for prompt/completion text) BLEU/chrF of `dataset`."""
    metrics = trainer.evaluate(eval_dataset=dataset, metric_key_prefix=prefix)
    # TRL names its own evaluation metrics (entropy, mean_token_accuracy, num_tokens) "eval_*" whatever the prefix.
    metrics = {(f"{prefix}_{k[5:]}" if k.startswith("eval_") else k): v for k, v in metrics.items()}
    metrics[f"{prefix}_perplexity"] = math.exp(min(metrics[f"{prefix}_loss"], 50.0))
    metrics[f"{prefix}_samples"] = len(dataset)
    # Teacher-forced, on the tokenized split as TRL prepares it (the same for CE and COT models).
    prepared = trainer._prepare_dataset(dataset, tokenizer, trainer.args, False, None, prefix)
    metrics.update(evaluate_complement_entropy(trainer, prepared, metric_key_prefix=prefix))
    n = min(data_args.num_generate_samples, len(dataset))
    columns = dataset.column_names
    if n > 0 and "prompt" in columns and "completion" in columns and isinstance(dataset[0]["prompt"], str):
        rows = dataset.select(range(n))
        predictions = generate_completions(
            trainer.model, tokenizer, rows["prompt"], data_args.max_new_tokens, data_args.generation_batch_size
        )
        predictions = [p.split("\n")[0].strip() for p in predictions]  # one line: the model may go on to a new pair
        references = [c.strip() for c in rows["completion"]]
        scores = cot_metrics.load("translation_metrics").compute(predictions=predictions, references=references)
        metrics[f"{prefix}_bleu"], metrics[f"{prefix}_chrf"] = scores["bleu"], scores["chrf"]
        metrics[f"{prefix}_generated_samples"] = n
        if trainer.is_world_process_zero():
            path = os.path.join(trainer.args.output_dir, f"{prefix}_generations.jsonl")
            with open(path, "w", encoding="utf-8") as f:
                for prompt, prediction, reference in zip(rows["prompt"], predictions, references, strict=True):
                    f.write(json.dumps({"prompt": prompt, "prediction": prediction, "reference": reference}) + "\n")
    return metrics


# ------------------------------------------------------------------------------------------------------------ main


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
        f"distributed: {training_args.parallel_mode.value == 'distributed'}, fp16: {training_args.fp16}, bf16: {training_args.bf16}"
    )


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


def parse_args(argv=None):
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, COTSFTConfig))
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 1 and argv[0].endswith(".json"):
        return parser.parse_json_file(json_file=os.path.abspath(argv[0]))
    return parser.parse_args_into_dataclasses(args=argv)


def main(argv=None):
    model_args, data_args, training_args = parse_args(argv)
    setup_logging(training_args)
    last_checkpoint = detect_last_checkpoint(training_args)
    set_seed(training_args.seed)  # before the model is built: the default model is trained from scratch

    raw = load_raw_datasets(model_args, data_args)
    train = select(raw, "train", data_args.max_train_samples) if training_args.do_train else None
    evaluation = select(raw, "validation", data_args.max_eval_samples) if training_args.do_eval else None
    predict = select(raw, "test", data_args.max_predict_samples) if training_args.do_predict else None
    model, tokenizer = load_model_and_tokenizer(model_args, train, training_args)

    trainer = COTSFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train,
        eval_dataset=evaluation,
        processing_class=tokenizer,
    )
    if training_args.do_train:
        train_result = trainer.train(resume_from_checkpoint=last_checkpoint)
        metrics = train_result.metrics
        metrics["train_samples"] = len(train)
        trainer.save_model()  # saves the tokenizer too
        trainer.log_metrics("train", metrics)
        trainer.save_metrics("train", metrics)
        trainer.save_state()
    for split, prefix in ((evaluation, "eval"), (predict, "predict")):
        if split is None:
            continue
        logger.info(f"*** Scoring {prefix} ***")
        metrics = score_split(trainer, split, prefix, data_args, tokenizer)
        trainer.log_metrics(prefix, metrics)
        trainer.save_metrics(prefix, metrics)

    dataset_name = data_args.dataset_name or ("local files" if data_args.train_file else "Bible es-en (RV1909/WEB)")
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=dataset_name)
    elif trainer.is_world_process_zero():
        trainer.create_model_card(dataset_name=dataset_name)
    results = {}
    path = os.path.join(training_args.output_dir, "all_results.json")
    # Only the main process writes the file; another rank could read it half-written (ranks do not wait here).
    if trainer.is_world_process_zero() and os.path.isfile(path):
        with open(path) as f:
            results = json.load(f)
    # Leave together and tear the process group down (as the other example scripts do under `accelerate launch`).
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()
    return results


if __name__ == "__main__":
    main()
