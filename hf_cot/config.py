"""Training arguments for COT: one set of fields, mixed into `TrainingArguments` and `Seq2SeqTrainingArguments`.

How arguments a caller gave without the COT fields become COT arguments: `hf_cot.argument_conversion`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from transformers import Seq2SeqTrainingArguments, TrainingArguments
from transformers.utils import logging

from .losses import NORMALIZATIONS

COT_MODES = ("alternating", "joint", "guided", "off")

logger = logging.get_logger(__name__)


@dataclass
class COTArgumentsMixin:
    r"""
    The Complement Objective Training fields, defined once for [`COTTrainingArguments`] and
    [`COTSeq2SeqTrainingArguments`].

    Every other field is the parent's (see [`~transformers.TrainingArguments`]). With
    [`~transformers.HfArgumentParser`] these fields become command-line arguments (`--cot_mode joint`, ...).

    Parameters:
        > Parameters that choose the mode

        cot_mode (`str`, *optional*, defaults to `"joint"`):
            How the complement objective enters training. Possible values are:

            - `"joint"` (CCE): one update on `CE + complement_weight * (-H / c)` (about 1x the cost of a CE step).
              The default: the only mode never worse than cross-entropy in the study (RESULTS.md: BBC-5,
              verse->book 66 classes, es->en translation).
            - `"alternating"` (the COT paper's Algorithm 1): every optimizer step is followed by a second
              forward/backward on the same micro-batches that maximizes the complement entropy, applied by a
              separate optimizer on the same learning-rate schedule (about 2x).
            - `"guided"` (GCE, ICCV 2019): one update on the Guided Complement Entropy loss alone (about 1x).
            - `"off"`: exactly the parent Trainer.

        > Parameters that control the complement optimizer (`"alternating"` only)

        complement_learning_rate (`float` or `None`, *optional*, defaults to `None`):
            Peak learning rate of the complement optimizer, a copy of the primary optimizer's class, parameter
            groups and hyper-parameters. It follows the same scheduler type, warm-up and length as the primary one.
            `None` means `learning_rate` (as in the official COT code).
        complement_every (`int`, *optional*, defaults to `1`):
            Run the complement update on every k-th optimizer step only (cost about 1 + 1/k of a CE step). The
            complement learning-rate schedule still advances every step.

        > Parameters that weight the objective (`"joint"` and `"guided"`)

        complement_weight (`float`, *optional*, defaults to `1.0`):
            Weight of the normalized complement objective added to cross-entropy in `"joint"` mode:
            `loss = CE + complement_weight * (-H / c)`. CCE's recommended gamma = -1 with its 1/(K-1) factor is
            `complement_weight=1` with `complement_normalization="paper"`. Must be >= 0.
        guided_alpha (`float`, *optional*, defaults to `1/3`):
            Exponent alpha of the guide factor `p_g^alpha` in `"guided"` mode (GCE paper default). Must be >= 0.

        > Parameters that normalize the complement entropy (`"alternating"` and `"joint"`)

        complement_normalization (`str`, *optional*, defaults to `"log"`):
            Constant `c` the complement entropy H is divided by in the complement objective `-H / c`, over K classes
            (or vocabulary entries). Possible values are:

            - `"log"`: `c = log(K-1)`, so the objective lies in [-1, 0] for any K.
            - `"paper"`: `c = K-1`, the COT paper's Eq. 2; over a 30k vocabulary this makes an SGD complement step
              about 3000x smaller than with `"log"`.
            - `"none"`: `c = 1`.

            With Adam/AdamW a constant scale mostly cancels in the update, so the choice matters most for SGD and
            for `"joint"` mode, where it sets the balance against CE. `"guided"` mode always divides by
            `log(K-1)`, as GCE does.

        > Parameters that weight the classes (classification heads)

        class_weights (`list[float]` or `None`, *optional*, defaults to `None`):
            One weight per class, in label-id order. Every position's terms are multiplied by the weight `w_g` of its
            ground-truth class and the loss is divided by the summed weights: the cross-entropy is PyTorch's
            `cross_entropy(weight=w)`, and the COT modes weight their complement term the same way (`joint`:
            `sum_i w_gi (CE_i - complement_weight * H_i / c) / sum_i w_gi`; `guided`: the GCE terms; `alternating`:
            both steps). Applies in `cot_mode="off"` too. Classification heads only (K = `config.num_labels`); not
            with `label_smoothing_factor > 0`.

        > Parameters that control memory

        cot_fused_lm_head (`bool` or `None`, *optional*, defaults to `None`):
            Compute the cross-entropy and the complement terms of a causal LM from its final hidden states, projecting
            them through the LM head a chunk of tokens at a time, so that the `[tokens, vocabulary]` logits are never
            built (as TRL's `SFTTrainer` does for its loss). Training gives the same parameters as with the logits.
            `None`: on wherever the model qualifies (a causal LM whose head is a plain linear layer on the backbone's
            last hidden state, no label smoothing, no FSDP/DeepSpeed). `True`: required (an error says why a model
            does not qualify). `False`: always build the logits.
    """

    cot_mode: str = field(
        default="joint",
        metadata={
            "help": (
                "How the complement objective enters training. Default 'joint': the only mode that was never worse "
                "than cross-entropy in the study (RESULTS.md: BBC-5, verse->book 66 classes, es->en translation). "
                "'alternating' (the COT paper's Algorithm 1): every "
                "optimizer step is followed by a second forward/backward on the same micro-batches that maximizes "
                "the complement entropy, applied by a separate optimizer on the same learning-rate schedule (about "
                "2x the cost of a CE step). 'joint' (the CCE form): one update on CE + complement_weight * "
                "complement objective (about 1x). 'guided': one update on the Guided Complement Entropy loss alone "
                "(GCE, ICCV 2019; about 1x). 'off': exactly the parent Trainer."
            ),
            "choices": list(COT_MODES),
        },
    )
    complement_learning_rate: float | None = field(
        default=None,
        metadata={
            "help": (
                "Peak learning rate of the complement optimizer in 'alternating' mode. It follows the same "
                "scheduler type, warm-up and length as the primary one. Defaults to `learning_rate` (as in the "
                "official COT code)."
            )
        },
    )
    complement_weight: float = field(
        default=1.0,
        metadata={
            "help": (
                "Weight of the normalized complement objective added to cross-entropy in 'joint' mode: loss = CE + "
                "complement_weight * (-H / normalizer). CCE's recommended gamma = -1 with its 1/(K-1) factor is "
                "complement_weight=1 with complement_normalization='paper'."
            )
        },
    )
    guided_alpha: float = field(
        default=1.0 / 3.0,
        metadata={"help": "Exponent alpha of the guide factor p_g^alpha in 'guided' mode (GCE paper default: 1/3)."},
    )
    complement_normalization: str = field(
        default="log",
        metadata={
            "help": (
                "Constant the complement entropy H is divided by in the complement objective -H / c. 'log': "
                "c = log(K-1), so the objective lies in [-1, 0] for any number of classes or vocabulary size "
                "(default). 'paper': c = K-1, the COT paper's Eq. 2; over a 30k vocabulary this makes an SGD "
                "complement step about 3000x smaller than with 'log'. With Adam/AdamW a constant scale mostly "
                "cancels in the update, so the choice matters most for SGD and for 'joint' mode, where it sets the "
                "balance against CE. 'none': c = 1."
            ),
            "choices": list(NORMALIZATIONS),
        },
    )
    complement_every: int = field(
        default=1,
        metadata={
            "help": (
                "Run the complement update of 'alternating' mode on every k-th optimizer step only (cost about "
                "1 + 1/k of a CE step). The complement learning-rate schedule still advances every step."
            )
        },
    )

    cot_fused_lm_head: bool | None = field(
        default=None,
        metadata={
            "help": (
                "Compute a causal LM's cross-entropy and complement terms from its final hidden states, chunk by chunk "
                "through the LM head, never building the [tokens, vocabulary] logits (same parameters as with the "
                "logits, a fraction of the memory). Default (unset): on wherever the model qualifies (a plain linear "
                "head on the backbone's last hidden state, no label smoothing, no FSDP/DeepSpeed). true: required "
                "(error if the model does not qualify). false: always build the logits."
            )
        },
    )

    class_weights: list[float] | None = field(
        default=None,
        metadata={
            "help": (
                "One weight per class (label-id order) for classification heads (sequence, token, image, audio "
                "classification): every position's terms are multiplied by its ground-truth class's weight w_g and "
                "the loss is divided by the summed weights, so the cross-entropy is PyTorch's "
                "cross_entropy(weight=w) and, in the COT modes, the complement term is weighted the same way "
                "(joint: sum w_g (CE - weight * H / c) / sum w_g). Also in cot_mode='off', where it replaces a "
                "compute_loss override that applies class weights. Default: none (every class weighs 1)."
            ),
        },
    )

    def _validate_cot_fields(self) -> None:
        if self.cot_mode not in COT_MODES:
            raise ValueError(f"--cot_mode must be one of {COT_MODES}, got {self.cot_mode!r}")
        if self.complement_normalization not in NORMALIZATIONS:
            raise ValueError(
                f"--complement_normalization must be one of {NORMALIZATIONS}, got {self.complement_normalization!r}"
            )
        if self.complement_learning_rate is not None and not self.complement_learning_rate >= 0:
            raise ValueError(f"--complement_learning_rate must be >= 0, got {self.complement_learning_rate}")
        if not self.complement_weight >= 0:
            raise ValueError(
                f"--complement_weight must be >= 0, got {self.complement_weight} (a negative weight would "
                "*lower* the complement entropy, the opposite of COT)"
            )
        if not self.guided_alpha >= 0:
            raise ValueError(f"--guided_alpha must be >= 0, got {self.guided_alpha}")
        if (
            isinstance(self.complement_every, bool)
            or not isinstance(self.complement_every, int)
            or self.complement_every < 1
        ):
            raise ValueError(f"--complement_every must be an integer >= 1, got {self.complement_every!r}")
        COTArgumentsMixin._validate_class_weights(self)  # a plain call: axolotl validates a namespace of the fields

    def _validate_class_weights(self) -> None:
        weights = self.class_weights
        if weights is None:
            return
        if isinstance(weights, (str, bytes)) or not hasattr(weights, "__len__") or len(weights) < 2:
            raise ValueError(f"--class_weights must be one number per class (at least 2), got {weights!r}")
        try:
            values = [float(w) for w in weights]
        except (TypeError, ValueError):
            raise ValueError(f"--class_weights must be numbers, got {weights!r}") from None
        if not all(math.isfinite(w) and w >= 0 for w in values) or not any(w > 0 for w in values):
            raise ValueError(f"--class_weights must be finite and >= 0, with at least one > 0; got {weights!r}")
        if getattr(self, "label_smoothing_factor", 0) > 0:
            raise ValueError(
                "--class_weights cannot be combined with --label_smoothing_factor > 0: the Trainer's label smoother "
                "takes no class weights and PyTorch weights the smoothing term per class, two different losses. "
                "Use one of them."
            )

    def _refuse_liger(self) -> None:
        """transformers' and TRL's `use_liger_kernel` (not axolotl's Liger plugin, whose config keys the axolotl
        integration checks one by one)."""
        if getattr(self, "use_liger_kernel", False) and self.cot_mode != "off":
            raise ValueError(
                f"use_liger_kernel cannot be combined with cot_mode={self.cot_mode!r}: Liger replaces the model's "
                "forward and computes its own loss, so COT never sees the logits. Use cot_mode='off' with Liger."
            )

    @property
    def effective_complement_learning_rate(self) -> float:
        return self.learning_rate if self.complement_learning_rate is None else self.complement_learning_rate


@dataclass(repr=False)  # TrainingArguments.__repr__ masks the tokens; a generated one would not
class COTTrainingArguments(COTArgumentsMixin, TrainingArguments):
    """`TrainingArguments` plus the COT fields (see `COTArgumentsMixin`)."""

    def __post_init__(self):
        self._validate_cot_fields()
        self._refuse_liger()
        super().__post_init__()


@dataclass(repr=False)
class COTSeq2SeqTrainingArguments(COTArgumentsMixin, Seq2SeqTrainingArguments):
    """`Seq2SeqTrainingArguments` plus the COT fields (see `COTArgumentsMixin`)."""

    def __post_init__(self):
        self._validate_cot_fields()
        self._refuse_liger()
        super().__post_init__()
