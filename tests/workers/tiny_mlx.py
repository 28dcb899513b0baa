"""Write a tiny random-weight MLX model directory for fast ``mlx_lm`` backend tests.

What :func:`write_tiny_mlx` puts in the directory (what ``mlx_lm.load`` reads):

* ``config.json``: a llama-architecture model, 64-dim, 2 layers, 4 heads;
* ``model.safetensors``: random weights with mlx-lm's own parameter names (taken
  from an instance of ``mlx_lm.models.llama.Model``, so they always match);
* ``tokenizer.json`` + ``tokenizer_config.json``: a byte-level BPE built here with
  the ``tokenizers`` library (every string tokenizes, no merges needed), ChatML
  control tokens as added tokens and a ChatML chat template.

About 0.2 MB; loads in well under a second. Its output is noise, so tests assert on
mechanisms (streaming, stopping, caching, cancelling), never on wording.
"""

from __future__ import annotations

import json
from pathlib import Path

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>", "<think>", "</think>"]
HIDDEN = 64
LAYERS = 2
HEADS = 4


def _tokenizer_json() -> tuple[str, int]:
    """(tokenizer.json text, vocabulary size) of a byte-level BPE with no merges."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()  # the 256 byte stand-in characters
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIAL[:3]])
    # Tool and thinking markers are ordinary added tokens: they stay in decoded text.
    tok.add_tokens([AddedToken(s, special=False, normalized=False) for s in SPECIAL[3:]])
    return tok.to_str(), tok.get_vocab_size()


def write_tiny_mlx(path: str | Path, context_length: int = 2048, seed: int = 0,
                   chat_template: str | None = CHATML_TEMPLATE) -> Path:
    """Write the model directory at ``path`` and return it. ``chat_template=None``
    writes a tokenizer without a template (the backend falls back to its own)."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.models import llama

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer_text, n_vocab = _tokenizer_json()
    config = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": HIDDEN,
        "num_hidden_layers": LAYERS,
        "intermediate_size": 2 * HIDDEN,
        "num_attention_heads": HEADS,
        "num_key_value_heads": HEADS,
        "rms_norm_eps": 1e-5,
        "vocab_size": n_vocab,
        "max_position_embeddings": context_length,
        "tie_word_embeddings": True,
        "eos_token_id": 256 + SPECIAL.index("<|im_end|>"),  # added tokens follow the 256 bytes
    }
    (path / "config.json").write_text(json.dumps(config, indent=1))
    mx.random.seed(seed)
    model = llama.Model(llama.ModelArgs.from_dict(config))
    # Larger than the default init so the random logits are not flat.
    weights = {k: (v * 4 if v.ndim == 2 else v) for k, v in tree_flatten(model.parameters())}
    mx.save_safetensors(str(path / "model.safetensors"), weights, metadata={"format": "mlx"})
    (path / "tokenizer.json").write_text(tokenizer_text)
    tcfg: dict[str, object] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "bos_token": None,
        "unk_token": None,
        "model_max_length": context_length,
        "clean_up_tokenization_spaces": False,
    }
    if chat_template is not None:
        tcfg["chat_template"] = chat_template
    (path / "tokenizer_config.json").write_text(json.dumps(tcfg, indent=1))
    return path
