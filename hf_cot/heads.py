"""Which head a model has, and how its own loss lines its logits up with its labels: one table per task.

The decision reads what transformers itself knows, as the Auto classes do, never a class-name suffix:

1. the Auto mappings (``MODEL_FOR_<TASK>_MAPPING_NAMES``): the task a model class was built for (for a subclass, its
   nearest listed ancestor); remote-code models through their config's ``auto_map`` (``AutoModelForCausalLM`` ->
   ``modeling_x.XForCausalLM``); `register_head` for anything else;
2. within the language-model tasks, how the model's own loss aligns positions: encoder-decoders
   (``config.is_encoder_decoder``) score position t against label t and build their decoder inputs from the labels;
   masked LMs (``MODEL_FOR_MASKED_LM``) score position t against label t; decoder-only LMs shift by one, except the
   decoders in `UNSHIFTED_DECODERS`, whose own loss compares position t with label t (read from their forwards:
   ``CrossEntropyLoss()(logits.view(-1, V), labels.view(-1))`` with no shift).

A class no table knows falls back to "position t against label t, K from the logits"; `hf_cot.alignment_check`
verifies every model against its own loss on the first batch anyway and refuses a mismatch.

Tasks with no single target class per scored position (CTC, detection, segmentation, multi-label, regression, ...)
are refused by `COTTrainer(...)` with the reason (`REFUSED`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

__all__ = [
    "Head",
    "base_model",
    "head_for",
    "head_for_class",
    "is_registered",
    "register_head",
    "UnsupportedHeadError",
]


class UnsupportedHeadError(ValueError):
    """The model's head has no single target class per scored position: COT's complement is undefined."""


@dataclass(frozen=True)
class Head:
    """How COT scores one model, as the model's own loss does.

    ``targets``: ``(output key, batch key)`` pairs, each a class per scored position (QA has two: start and end; the
    model's loss is their mean). ``shift``: position t's logits score label t + 1. ``vocabulary``: K is the vocabulary.
    ``num_labels_from_config``: K is ``config.num_labels``, known before the first batch (classification heads).
    ``positions``: K is the sequence length and targets at or past it are ignored (QA: the model clamps them).
    """

    task: str
    shift: bool = False
    vocabulary: bool = False
    encoder_decoder: bool = False
    num_labels_from_config: bool = False
    positions: bool = False
    targets: tuple[tuple[str, str], ...] = (("logits", "labels"),)

    @property
    def label_names(self) -> tuple[str, ...]:
        return tuple(label for _, label in self.targets)


CAUSAL_LM = Head("causal-lm", shift=True, vocabulary=True)
UNSHIFTED_LM = Head("decoder-lm (labels aligned with positions)", vocabulary=True)
MASKED_LM = Head("masked-lm", vocabulary=True)
SEQ2SEQ_LM = Head("seq2seq-lm", vocabulary=True, encoder_decoder=True)
CLASSIFICATION = Head("classification", num_labels_from_config=True)
TOKEN_CLASSIFICATION = Head("token-classification", num_labels_from_config=True)
MULTIPLE_CHOICE = Head("multiple-choice")  # K = the number of choices (config.num_labels means nothing there)
NEXT_SENTENCE = Head("next-sentence-prediction")
QUESTION_ANSWERING = Head(
    "question-answering",
    positions=True,
    targets=(("start_logits", "start_positions"), ("end_logits", "end_positions")),
)
UNKNOWN = Head("unknown (position t against label t, K from the logits; checked against the model's own loss)")

# Language-model tasks: which of the LM heads above is decided from the model (`_lm_head`).
LM_MAPPINGS = (
    "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES",
    "MODEL_FOR_MASKED_LM_MAPPING_NAMES",
    "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES",
    "MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES",
    "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES",
    "MODEL_FOR_MULTIMODAL_LM_MAPPING_NAMES",  # transformers >= 5
    "MODEL_FOR_VISION_2_SEQ_MAPPING_NAMES",  # transformers 4.x
)
MASKED_LM_MAPPING = "MODEL_FOR_MASKED_LM_MAPPING_NAMES"

# The other supported tasks, in the order they are tried (a class listed in two tasks takes the first).
TASK_MAPPINGS = (
    ("MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES", QUESTION_ANSWERING),
    ("MODEL_FOR_DOCUMENT_QUESTION_ANSWERING_MAPPING_NAMES", QUESTION_ANSWERING),
    ("MODEL_FOR_MULTIPLE_CHOICE_MAPPING_NAMES", MULTIPLE_CHOICE),
    ("MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES", TOKEN_CLASSIFICATION),
    ("MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES", CLASSIFICATION),
    ("MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES", CLASSIFICATION),
    ("MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES", CLASSIFICATION),
    ("MODEL_FOR_VIDEO_CLASSIFICATION_MAPPING_NAMES", CLASSIFICATION),
    ("MODEL_FOR_NEXT_SENTENCE_PREDICTION_MAPPING_NAMES", NEXT_SENTENCE),
)

_SEGMENTATION = (
    "segmentation: the model resizes its logits to the label map (or matches predicted masks to targets) inside its "
    "own loss; hf-cot does not reproduce that, so it refuses rather than score another objective"
)
_NO_HEAD = "a base model without a task head: it returns hidden states, no logits to score"
# Tasks refused at construction, with the reason. Tried after the supported ones: many LM classes are also listed
# under pretraining, and most models under the bare MODEL_MAPPING.
REFUSED = {
    "MODEL_FOR_CTC_MAPPING_NAMES": "CTC: the labels are a shorter target sequence that the CTC loss aligns itself; "
    "there is no target class per output position",
    "MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES": "object detection: a set of boxes matched to the predictions by the "
    "model's own matcher, not one target class per output",
    "MODEL_FOR_ZERO_SHOT_OBJECT_DETECTION_MAPPING_NAMES": "zero-shot object detection: boxes matched to predictions",
    "MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES": _SEGMENTATION,
    "MODEL_FOR_IMAGE_SEGMENTATION_MAPPING_NAMES": _SEGMENTATION,
    "MODEL_FOR_INSTANCE_SEGMENTATION_MAPPING_NAMES": _SEGMENTATION,
    "MODEL_FOR_UNIVERSAL_SEGMENTATION_MAPPING_NAMES": _SEGMENTATION,
    "MODEL_FOR_AUDIO_FRAME_CLASSIFICATION_MAPPING_NAMES": "audio frame classification: one-hot (multi-label) frame "
    "labels",
    "MODEL_FOR_AUDIO_XVECTOR_MAPPING_NAMES": "x-vector speaker embeddings: an additive-margin softmax over "
    "embeddings, not logits over classes",
    "MODEL_FOR_VISUAL_QUESTION_ANSWERING_MAPPING_NAMES": "visual question answering over an answer vocabulary: soft "
    "multi-label targets (binary cross-entropy)",
    "MODEL_FOR_TABLE_QUESTION_ANSWERING_MAPPING_NAMES": "table question answering: cell selection and aggregation "
    "losses",
    "MODEL_FOR_ZERO_SHOT_IMAGE_CLASSIFICATION_MAPPING_NAMES": "contrastive image-text models: no class logits with "
    "labels",
    "MODEL_FOR_RNNT_MAPPING_NAMES": "transducer (RNN-T) losses align labels themselves",
    "MODEL_FOR_TDT_MAPPING_NAMES": "transducer (TDT) losses align labels themselves",
    "MODEL_FOR_PRETRAINING_MAPPING_NAMES": "pretraining heads: several objectives at once (e.g. masked LM and "
    "next-sentence prediction)",
    "MODEL_FOR_DEPTH_ESTIMATION_MAPPING_NAMES": "depth estimation is a regression",
    "MODEL_FOR_TIME_SERIES_PREDICTION_MAPPING_NAMES": "time-series prediction is a regression",
    "MODEL_FOR_TEXT_TO_SPECTROGRAM_MAPPING_NAMES": "speech synthesis is a regression over spectrograms",
    "MODEL_FOR_TEXT_TO_WAVEFORM_MAPPING_NAMES": "speech synthesis: no class targets",
    "MODEL_FOR_MASKED_IMAGE_MODELING_MAPPING_NAMES": "masked image modeling reconstructs pixels (a regression)",
    "MODEL_FOR_IMAGE_TO_IMAGE_MAPPING_NAMES": "image-to-image models regress pixels",
    "MODEL_FOR_MASK_GENERATION_MAPPING_NAMES": "mask generation: no class targets",
    "MODEL_FOR_KEYPOINT_DETECTION_MAPPING_NAMES": "keypoint detection: no class targets",
    "MODEL_MAPPING_NAMES": _NO_HEAD,
    "MODEL_FOR_BACKBONE_MAPPING_NAMES": _NO_HEAD,
    "MODEL_FOR_IMAGE_MAPPING_NAMES": _NO_HEAD,
    "MODEL_FOR_TEXT_ENCODING_MAPPING_NAMES": _NO_HEAD,
}

# Decoders listed for AutoModelForCausalLM whose own loss compares position t with label t (no shift): the decoder
# halves of encoder-decoders (their labels come pre-shifted), XLNet's permutation LM; read from their forwards
# (transformers 5.25 and 4.57). tests/trainers/test_heads.py reads every causal-LM class's forward to keep this list honest.
UNSHIFTED_DECODERS = frozenset(
    {
        "BartForCausalLM",
        "BigBirdPegasusForCausalLM",
        "BlenderbotForCausalLM",
        "BlenderbotSmallForCausalLM",
        "CpmAntForCausalLM",
        "GPTSanJapaneseForConditionalGeneration",  # transformers 4.x
        "MBartForCausalLM",
        "MarianForCausalLM",
        "MvpForCausalLM",
        "PLBartForCausalLM",
        "PegasusForCausalLM",
        "Speech2Text2ForCausalLM",  # transformers 4.x
        "TrOCRForCausalLM",
        "WhisperForCausalLM",
        "XLNetLMHeadModel",
    }
)
# Language models whose own loss is something else than the cross-entropy of one target per position: refused.
_CODEBOOKS = "its logits have one axis per audio codebook and its loss averages the codebooks"
_NGRAM = "its own loss predicts n future tokens per position (n-gram streams) with label smoothing"
_SMOOTHED = "its own loss applies label smoothing (0.1), which COT's complement objective would double"
OWN_LOSS_REFUSED = {
    "MusicgenForCausalLM": _CODEBOOKS,
    "MusicgenMelodyForCausalLM": _CODEBOOKS,
    "ProphetNetForCausalLM": _NGRAM,
    "ProphetNetForConditionalGeneration": _NGRAM,
    "XLMProphetNetForCausalLM": _NGRAM,
    "XLMProphetNetForConditionalGeneration": _NGRAM,
    "BlipForConditionalGeneration": _SMOOTHED,
    "BlipForQuestionAnswering": _SMOOTHED,
}

_REGISTERED: dict[str, Head] = {}


def register_head(model_class, head: Head | str) -> None:
    """Tell hf-cot how to score a model class no Auto mapping lists (a remote-code or home-made model).

    ``head`` is a `Head` or one of ``"causal-lm"`` (shift by one), ``"masked-lm"``, ``"seq2seq-lm"``,
    ``"classification"``, ``"token-classification"``, ``"multiple-choice"``, ``"question-answering"``. The first batch
    is still checked against the model's own loss.
    """
    if isinstance(head, str):
        known = {
            h.task: h
            for h in (
                CAUSAL_LM,
                MASKED_LM,
                SEQ2SEQ_LM,
                CLASSIFICATION,
                TOKEN_CLASSIFICATION,
                MULTIPLE_CHOICE,
                QUESTION_ANSWERING,
            )
        }
        if head not in known:
            raise ValueError(f"unknown head {head!r}: use one of {sorted(known)} or a hf_cot.heads.Head")
        head = known[head]
    name = model_class if isinstance(model_class, str) else model_class.__name__
    _REGISTERED[name] = head


@functools.lru_cache(maxsize=1)
def _mapping_index() -> dict[str, tuple[str, ...]]:
    """Class name -> the names of the Auto mappings that list it (this transformers' version)."""
    import transformers.models.auto.modeling_auto as auto

    index: dict[str, list[str]] = {}
    for mapping_name in dir(auto):
        if not mapping_name.endswith("_MAPPING_NAMES") or mapping_name == "CONFIG_MAPPING_NAMES":
            continue
        for value in getattr(auto, mapping_name).values():
            for class_name in value if isinstance(value, (tuple, list)) else (value,):
                index.setdefault(class_name, []).append(mapping_name)
    return {name: tuple(mappings) for name, mappings in index.items()}


@functools.lru_cache(maxsize=1)
def _auto_class_mappings() -> dict[str, str]:
    """Auto class name (``AutoModelForCausalLM``) -> its mapping's name, for configs' ``auto_map``."""
    import transformers.models.auto.modeling_auto as auto

    by_identity = {
        id(getattr(auto, name)): name
        for name in dir(auto)
        if name.endswith("_MAPPING_NAMES") and name != "CONFIG_MAPPING_NAMES"
    }
    result = {}
    for name in dir(auto):
        mapping = getattr(getattr(auto, name), "_model_mapping", None)
        names = getattr(mapping, "_model_mapping", None)
        if name.startswith("AutoModel") and id(names) in by_identity:
            result[name] = by_identity[id(names)]
    return result


def _mappings_of(model_class, config) -> tuple[str, tuple[str, ...]]:
    """``(class name, mapping names)`` of the nearest class in the MRO that an Auto mapping (or ``auto_map``) lists."""
    index = _mapping_index()
    for cls in model_class.__mro__:
        if cls.__name__ in _REGISTERED:
            return cls.__name__, ()
        if cls.__name__ in index:
            return cls.__name__, index[cls.__name__]
    auto_map = getattr(config, "auto_map", None) or {}
    by_auto = _auto_class_mappings()
    listed = tuple(
        by_auto[auto_name]
        for auto_name, reference in auto_map.items()
        if auto_name in by_auto and str(reference).rsplit(".", 1)[-1] == model_class.__name__
    )
    return model_class.__name__, listed


def _lm_head(class_name: str, mappings: tuple[str, ...], config) -> Head:
    if class_name in UNSHIFTED_DECODERS:  # before the config: these decoders share their encoder-decoder's config
        return UNSHIFTED_LM
    if getattr(config, "is_encoder_decoder", False):
        return SEQ2SEQ_LM
    if MASKED_LM_MAPPING in mappings:
        return MASKED_LM
    return CAUSAL_LM


def head_for_class(model_class, config=None) -> Head:
    """The `Head` of ``model_class`` (with ``config``, which decides encoder-decoder vs decoder-only); raises
    `UnsupportedHeadError` for heads COT cannot score. Builds no model."""
    class_name, mappings = _mappings_of(model_class, config)
    if class_name in _REGISTERED:
        return _REGISTERED[class_name]
    if class_name in OWN_LOSS_REFUSED:
        raise UnsupportedHeadError(f"{class_name}: {OWN_LOSS_REFUSED[class_name]}")
    if any(m in LM_MAPPINGS for m in mappings):
        return _lm_head(class_name, mappings, config)
    for mapping_name, head in TASK_MAPPINGS:
        if mapping_name in mappings:
            return head
    for mapping_name in mappings:
        if mapping_name in REFUSED:
            raise UnsupportedHeadError(f"{class_name} ({mapping_name[:-14]}): {REFUSED[mapping_name]}")
    if getattr(config, "is_encoder_decoder", False):
        return SEQ2SEQ_LM
    return UNKNOWN


def base_model(model):
    """The model under a PEFT wrapper (a `PeftModel` keeps the transformers model one `get_base_model()` away)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def head_for(model) -> Head:
    """The `Head` of a model (under a PEFT wrapper: of its transformers model)."""
    base = base_model(model)
    return head_for_class(type(base), getattr(base, "config", None))


def is_registered(model) -> bool:
    """Whether the model's head was declared with `register_head` (for its class or an ancestor)."""
    return any(cls.__name__ in _REGISTERED for cls in type(base_model(model)).__mro__)
