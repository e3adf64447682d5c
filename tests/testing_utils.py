"""Helpers shared by the tests and by the helper scripts in tests/scripts: tiny random-init models, small synthetic
datasets and reference computations (offline, fast). Fixtures live in tests/conftest.py.

tests/conftest.py sets the test environment (offline flags, ``TRITON_INTERPRET`` without a GPU, one torch thread)
before anything imports torch; pytest loads it before any test module, so importing this module from a test is safe.
The scripts in tests/scripts set their own environment before importing it.
"""

import torch
from transformers import BertConfig, BertForSequenceClassification, MarianConfig, MarianMTModel

VOCAB = 61


def tiny_bert(num_labels: int = 5, seed: int = 0, **config_overrides) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    settings = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=64,
        num_labels=num_labels,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return BertForSequenceClassification(BertConfig(**{**settings, **config_overrides}))


def tiny_marian(seed: int = 0, vocab_size: int = VOCAB) -> MarianMTModel:
    torch.manual_seed(seed)
    config = MarianConfig(
        vocab_size=vocab_size,
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=37,
        decoder_ffn_dim=37,
        max_position_embeddings=64,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
    )
    return MarianMTModel(config)


def classification_data(n: int = 32, num_labels: int = 5, seq_len: int = 10, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        length = int(torch.randint(4, seq_len + 1, (1,), generator=g))
        ids = torch.randint(2, VOCAB, (seq_len,), generator=g)
        mask = (torch.arange(seq_len) < length).long()
        rows.append(
            {
                "input_ids": ids * mask,
                "attention_mask": mask,
                "labels": int(torch.randint(0, num_labels, (1,), generator=g)),
            }
        )
    return rows


def seq2seq_data(n: int = 24, src_len: int = 9, tgt_len: int = 7, seed: int = 0) -> list[dict]:
    """Variable-length targets padded with -100, so token-count normalization matters."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        ids = torch.randint(2, VOCAB, (src_len,), generator=g)
        n_tgt = int(torch.randint(2, tgt_len + 1, (1,), generator=g))
        labels = torch.full((tgt_len,), -100)
        labels[:n_tgt] = torch.randint(2, VOCAB, (n_tgt,), generator=g)
        labels[n_tgt - 1] = 1  # eos
        rows.append({"input_ids": ids, "attention_mask": torch.ones(src_len, dtype=torch.long), "labels": labels})
    return rows


def max_param_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters(), strict=True))


def tiny_llama(seed: int = 0, vocab_size: int = VOCAB):
    """A tiny random-init Llama-style causal LM (its own loss honours `num_items_in_batch`, so the plain Trainer's
    gradient-accumulation averaging is right for it)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=1,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config)


def causal_lm_data(n: int = 24, seq_len: int = 10, seed: int = 0) -> list[dict]:
    """Prompt positions and right padding at -100, with uneven completion lengths (uneven valid-token counts)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        ids = torch.randint(2, VOCAB, (seq_len,), generator=g)
        prompt = int(torch.randint(1, 4, (1,), generator=g))
        length = int(torch.randint(prompt + 2, seq_len + 1, (1,), generator=g))
        mask = (torch.arange(seq_len) < length).long()
        labels = ids.clone()
        labels[:prompt] = -100
        labels[length:] = -100
        rows.append({"input_ids": ids * mask, "attention_mask": mask, "labels": labels})
    return rows


def batch_of(rows):
    return {k: torch.stack([torch.as_tensor(r[k]) for r in rows]) for k in rows[0]}


def naive_entropy(logits, labels):
    """Reference complement entropy, float64, straight from the definition q_j = p_j / (1 - p_g)."""
    p = torch.softmax(logits.double(), -1)
    pg = p.gather(-1, labels.unsqueeze(-1))
    q = p / (1 - pg)
    mask = torch.ones_like(p).scatter_(-1, labels.unsqueeze(-1), 0.0)
    return -(q * torch.log(torch.where(mask.bool(), q, torch.ones_like(q))) * mask).sum(-1)


def tiny_causal_lm(arch: str, seed: int = 0, vocab_size: int = VOCAB):
    """Tiny random-init decoder-only LMs: Llama-, GPT-2- and Qwen2-style, and a BERT decoder (`BertLMHeadModel`)."""
    import transformers as tf

    torch.manual_seed(seed)
    if arch == "llama":
        return tiny_llama(seed=seed, vocab_size=vocab_size)
    if arch == "gpt2":
        config = tf.GPT2Config(vocab_size=vocab_size, n_positions=64, n_embd=32, n_layer=2, n_head=2, resid_pdrop=0.0,
                               embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=1, eos_token_id=1)  # fmt: skip
        return tf.GPT2LMHeadModel(config)
    if arch == "qwen2":
        config = tf.Qwen2Config(vocab_size=vocab_size, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                                tie_word_embeddings=True, pad_token_id=0)  # fmt: skip
        return tf.Qwen2ForCausalLM(config)
    if arch == "bert_decoder":
        config = tf.BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=37, max_position_embeddings=64, is_decoder=True,
                               hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # fmt: skip
        return tf.BertLMHeadModel(config)
    raise ValueError(arch)


def tiny_token_classifier(num_labels: int = 7, seed: int = 0):
    from transformers import BertForTokenClassification

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=37, max_position_embeddings=64, num_labels=num_labels,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # fmt: skip
    return BertForTokenClassification(config)


def token_classification_data(n: int = 24, seq_len: int = 10, num_labels: int = 7, seed: int = 0) -> list[dict]:
    """Tags per token; padding and the first (special) token at -100, uneven lengths."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        length = int(torch.randint(3, seq_len + 1, (1,), generator=g))
        mask = (torch.arange(seq_len) < length).long()
        ids = torch.randint(2, VOCAB, (seq_len,), generator=g) * mask
        labels = torch.randint(0, num_labels, (seq_len,), generator=g)
        labels[0] = -100
        labels[length:] = -100
        rows.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return rows


def write_rank_json(out: str, rank: int, **objects) -> None:
    """Multi-process helper scripts: ``OUT/<name>_rank<rank>.json`` for each keyword."""
    import json
    import os

    for name, obj in objects.items():
        with open(os.path.join(out, f"{name}_rank{rank}.json"), "w") as f:
            json.dump(obj, f)


def word_tokenizer():
    """A word-level fast tokenizer over ``w2 .. w{VOCAB-1}`` (``<pad>`` = 0, ``<eos>`` = 1), built offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<eos>"] + [f"w{i}" for i in range(2, VOCAB)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")


def prompt_completion(n=24, seed=0):
    """A prompt/completion `datasets.Dataset` of random words for `word_tokenizer` (TRL's SFT format)."""
    from datasets import Dataset

    g = torch.Generator().manual_seed(seed)

    def words(k):
        return " ".join(f"w{int(i)}" for i in torch.randint(2, VOCAB, (k,), generator=g))

    rows = [{"prompt": words(int(torch.randint(2, 6, (1,), generator=g))),
             "completion": words(int(torch.randint(1, 6, (1,), generator=g)))} for _ in range(n)]  # fmt: skip
    return Dataset.from_list(rows)


def tiny_moe(arch: str, router_aux_loss_coef: float = 0.5):
    """Tiny mixture-of-experts causal LMs with their router load-balancing loss on (output_router_logits)."""
    import transformers as tf

    torch.manual_seed(0)
    # expert sizes multiples of 16 bytes: transformers 5's grouped expert matmul needs aligned strides
    common = dict(vocab_size=61, hidden_size=32, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=1, max_position_embeddings=64, pad_token_id=0, output_router_logits=True,
                  router_aux_loss_coef=router_aux_loss_coef, num_experts_per_tok=2)  # fmt: skip
    if arch == "mixtral":
        return tf.MixtralForCausalLM(tf.MixtralConfig(num_local_experts=4, **common))
    if arch == "qwen2_moe":
        config = tf.Qwen2MoeConfig(
            num_experts=4, moe_intermediate_size=16, shared_expert_intermediate_size=16, **common
        )
        return tf.Qwen2MoeForCausalLM(config)
    if arch == "qwen3_moe":
        return tf.Qwen3MoeForCausalLM(
            tf.Qwen3MoeConfig(num_experts=4, moe_intermediate_size=16, head_dim=16, **common)
        )
    if arch == "olmoe":
        return tf.OlmoeForCausalLM(tf.OlmoeConfig(num_experts=4, **common))
    raise ValueError(arch)
