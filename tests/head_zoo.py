"""One tiny random-init model per head family, with a small batch of the shape its upstream example feeds it.

Every model has dropout 0, so that a training forward at learning rate 0 gives the model's eval-mode loss. Used by
tests/trainers/test_heads.py (and the VLM by tests/integrations/test_trl_vlm.py).
"""

import torch
import transformers as tf

from testing_utils import VOCAB, tiny_bert, tiny_causal_lm, tiny_marian, tiny_token_classifier

N = 6  # rows per batch
IMAGE_TOKEN = VOCAB - 1


def _ids(g, *shape):
    return torch.randint(3, VOCAB - 3, shape, generator=g)


def _lm_rows(g, seq_len=8, prompt=2):
    ids = _ids(g, N, seq_len)
    labels = ids.clone()
    labels[:, :prompt] = -100  # a prompt
    labels[0, -2:] = -100  # and padding
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def _mlm_rows(g, seq_len=8):
    ids = _ids(g, N, seq_len)
    masked = torch.rand(N, seq_len, generator=g) < 0.4
    masked[:, 0] = True
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.masked_fill(~masked, -100)}


def _llama_text(**kw):
    return tf.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=64, **kw,
    )  # fmt: skip


def tiny_gemma3(seed=0):
    """`Gemma3ForConditionalGeneration`: what `AutoModelForCausalLM` returns for every Gemma 3 checkpoint."""
    torch.manual_seed(seed)
    text = tf.Gemma3TextConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, max_position_embeddings=64, sliding_window=8,
        final_logit_softcapping=30.0,
    )  # fmt: skip
    vision = tf.SiglipVisionConfig(
        hidden_size=16, intermediate_size=20, num_hidden_layers=1, num_attention_heads=2, image_size=16, patch_size=8
    )
    config = tf.Gemma3Config(
        text_config=text, vision_config=vision, mm_tokens_per_image=4, image_token_index=IMAGE_TOKEN,
        boi_token_index=VOCAB - 2, eoi_token_index=VOCAB - 3,
    )  # fmt: skip
    return tf.Gemma3ForConditionalGeneration(config)


def tiny_llava(seed=0):
    """A decoder-only vision-language model (`AutoModelForImageTextToText`): CLIP tower, Llama language model; a
    16x16 image is 4 patches plus the CLS feature (vision_feature_select_strategy="full"), so 5 image tokens."""
    torch.manual_seed(seed)
    vision = tf.CLIPVisionConfig(
        hidden_size=16, intermediate_size=20, num_hidden_layers=1, num_attention_heads=2, image_size=16, patch_size=8,
        projection_dim=16,
    )  # fmt: skip
    config = tf.LlavaConfig(
        text_config=_llama_text(), vision_config=vision, image_token_index=IMAGE_TOKEN, vision_feature_layer=-1,
        vision_feature_select_strategy="full",
    )  # fmt: skip
    return tf.LlavaForConditionalGeneration(config)


def tiny_whisper(seed=0):
    torch.manual_seed(seed)
    config = tf.WhisperConfig(
        vocab_size=VOCAB, num_mel_bins=8, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=20, decoder_ffn_dim=20, d_model=16, max_source_positions=16,
        max_target_positions=32, pad_token_id=0, decoder_start_token_id=1, eos_token_id=2, bos_token_id=1,
        dropout=0.0,
    )  # fmt: skip
    return tf.WhisperForConditionalGeneration(config)


def tiny_xlm(seed=0):
    torch.manual_seed(seed)
    config = tf.XLMConfig(
        vocab_size=VOCAB, emb_dim=32, n_layers=1, n_heads=2, dropout=0.0, attention_dropout=0.0,
        max_position_embeddings=64,
    )  # fmt: skip
    return tf.XLMWithLMHeadModel(config)


def _bert(cls, seed=0, **kw):
    torch.manual_seed(seed)
    config = tf.BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
        max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **kw,
    )  # fmt: skip
    return cls(config)


def tiny_bart_decoder(seed=0):
    """`BartForCausalLM`: listed for AutoModelForCausalLM, but its own loss does not shift."""
    torch.manual_seed(seed)
    config = tf.BartConfig(
        vocab_size=VOCAB, d_model=16, decoder_layers=1, encoder_layers=1, decoder_attention_heads=2,
        encoder_attention_heads=2, decoder_ffn_dim=20, encoder_ffn_dim=20, dropout=0.0, attention_dropout=0.0,
        activation_dropout=0.0, max_position_embeddings=64,
    )  # fmt: skip
    return tf.BartForCausalLM(config)


def tiny_vit(seed=0, num_labels=5):
    torch.manual_seed(seed)
    config = tf.ViTConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=20, image_size=16, patch_size=8,
        num_labels=num_labels, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    return tf.ViTForImageClassification(config)


def _wav2vec2_config(**kw):
    return tf.Wav2Vec2Config(
        vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=20,
        conv_dim=(8, 8), conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=4,
        num_conv_pos_embedding_groups=2, hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
        feat_proj_dropout=0.0, final_dropout=0.0, layerdrop=0.0, mask_time_prob=0.0, classifier_proj_size=8, **kw,
    )  # fmt: skip


def tiny_wav2vec2_classifier(seed=0, num_labels=5):
    torch.manual_seed(seed)
    return tf.Wav2Vec2ForSequenceClassification(_wav2vec2_config(num_labels=num_labels))


def tiny_wav2vec2_ctc(seed=0):
    torch.manual_seed(seed)
    return tf.Wav2Vec2ForCTC(_wav2vec2_config())


def tiny_segformer(seed=0):
    torch.manual_seed(seed)
    config = tf.SegformerConfig(
        num_channels=3, num_encoder_blocks=1, depths=[1], sr_ratios=[1], hidden_sizes=[8], patch_sizes=[3],
        strides=[2], num_attention_heads=[1], mlp_ratios=[2], decoder_hidden_size=8, num_labels=4,
    )  # fmt: skip
    return tf.SegformerForSemanticSegmentation(config)


def family(name: str, seed: int = 0):
    """``(model, batch)`` of one head family: a dict of stacked tensors, as a data collator would give."""
    g = torch.Generator().manual_seed(seed + 1)
    if name in ("llama", "gpt2", "qwen2"):
        return tiny_causal_lm(name, seed=seed), _lm_rows(g)
    if name == "gemma3":
        return tiny_gemma3(seed), _lm_rows(g)
    if name == "llava":
        return tiny_llava(seed), _lm_rows(g)
    if name == "bart_decoder":
        return tiny_bart_decoder(seed), _lm_rows(g)
    if name == "marian":
        ids = _ids(g, N, 9)
        labels = _ids(g, N, 7)
        labels[0, -3:] = -100
        return tiny_marian(seed), {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    if name == "whisper":  # labels only, as the upstream speech seq2seq collator gives them
        labels = _ids(g, N, 5)
        labels[1, -2:] = -100
        return tiny_whisper(seed), {"input_features": torch.randn(N, 8, 32, generator=g), "labels": labels}
    if name == "bert_mlm":
        return _bert(tf.BertForMaskedLM, seed), _mlm_rows(g)
    if name == "xlm":
        return tiny_xlm(seed), _mlm_rows(g)
    if name == "sequence":
        ids = _ids(g, N, 10)
        return tiny_bert(seed=seed), {
            "input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.randint(0, 5, (N,), generator=g),
        }  # fmt: skip
    if name == "token":
        ids = _ids(g, N, 10)
        labels = torch.randint(0, 7, (N, 10), generator=g)
        labels[:, 0] = labels[:, -2:] = -100
        return tiny_token_classifier(seed=seed), {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                                                  "labels": labels}  # fmt: skip
    if name == "multiple_choice":  # 4 choices (run_swag.py): config.num_labels stays 2
        ids = _ids(g, N, 4, 8)
        return _bert(tf.BertForMultipleChoice, seed), {
            "input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.randint(0, 4, (N,), generator=g),
        }  # fmt: skip
    if name == "question_answering":
        ids = _ids(g, N, 10)
        start = torch.randint(0, 10, (N,), generator=g)
        end = torch.randint(0, 10, (N,), generator=g)
        start[1], end[2] = 15, -3  # past the sequence: the model ignores it; negative: clamped to 0
        return _bert(tf.BertForQuestionAnswering, seed), {
            "input_ids": ids, "attention_mask": torch.ones_like(ids), "start_positions": start, "end_positions": end,
        }  # fmt: skip
    if name == "image":
        return tiny_vit(seed), {"pixel_values": torch.randn(N, 3, 16, 16, generator=g),
                                "labels": torch.randint(0, 5, (N,), generator=g)}  # fmt: skip
    if name == "audio":
        return tiny_wav2vec2_classifier(seed), {"input_values": torch.randn(N, 400, generator=g),
                                                "labels": torch.randint(0, 5, (N,), generator=g)}  # fmt: skip
    raise ValueError(name)


FAMILIES = (
    "llama", "gemma3", "llava", "bart_decoder", "marian", "whisper", "bert_mlm", "xlm", "sequence", "token",
    "multiple_choice", "question_answering", "image", "audio",
)  # fmt: skip


def own_loss(model, batch) -> float:
    """The model's own loss on ``batch`` (eval mode, a direct call with the labels)."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        loss = model(**batch).loss
    model.train(was_training)
    return float(loss)
