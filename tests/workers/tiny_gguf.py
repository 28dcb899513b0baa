"""Write a tiny random-weight llama GGUF for fast backend tests.

64-dim, 2 blocks, an SPM vocabulary with all 256 byte tokens (so any text
tokenizes), ChatML control tokens and a ChatML chat template. About 0.5 MB; loads
and generates in well under a second. Its output is noise, so tests assert on
mechanisms (streaming, stopping, caching, grammar), never on wording.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

N_EMBD = 64
N_FF = 128
N_HEAD = 4
N_LAYER = 2

_WORDS = [
    "the", "a", "is", "of", "and", "to", "in", "it", "you", "that", "hello", "world",
    "name", "arguments", "command", "echo", "hi", "tool", "call", "say", "word",
]


def vocabulary(specials: tuple[str, ...] = ()) -> tuple[list[str], list[float], list[int]]:
    """(tokens, scores, types) of an SPM vocabulary with byte fallback; ``specials``
    are more control tokens (a chat format's markers)."""
    from gguf import TokenType

    tokens: list[str] = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    types: list[int] = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL, TokenType.CONTROL, TokenType.CONTROL]
    for special in ("<tool_call>", "</tool_call>", "<think>", "</think>"):
        tokens.append(special)
        types.append(TokenType.USER_DEFINED)
    for special in specials:
        if special not in tokens:
            tokens.append(special)
            types.append(TokenType.CONTROL)
    for b in range(256):
        tokens.append(f"<0x{b:02X}>")
        types.append(TokenType.BYTE)
    pieces = ["\u2581"] + [chr(c) for c in range(33, 127)]
    pieces += ["\u2581" + w for w in _WORDS] + _WORDS
    for p in pieces:
        if p not in tokens:
            tokens.append(p)
            types.append(TokenType.NORMAL)
    # SPM merges by score: longer pieces score higher so words stay whole.
    scores = [0.0 if t != TokenType.NORMAL else float(len(tok)) - 10.0 for tok, t in zip(tokens, types, strict=True)]
    return tokens, scores, [int(t) for t in types]


def write_tiny_gguf(path: str | Path, context_length: int = 2048, seed: int = 0, *,
                    chat_template: str | None = CHATML_TEMPLATE, specials: tuple[str, ...] = ()) -> Path:
    """``chat_template``: the template the GGUF carries (None: a base model, no
    template in the file); ``specials``: its markers, as control tokens (llama.cpp
    marks ``<|im_end|>``, ``<|return|>``, ``<|call|>``… end-of-generation by their
    text, as for real models)."""
    import gguf

    path = Path(path)
    rng = np.random.default_rng(seed)
    tokens, scores, types = vocabulary(specials)
    n_vocab = len(tokens)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("turnout-tiny-test")
    w.add_context_length(context_length)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(N_LAYER)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD)
    w.add_rope_dimension_count(N_EMBD // N_HEAD)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_eot_token_id(4)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    if chat_template is not None:
        w.add_chat_template(chat_template)

    def t(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.2).astype(np.float32)

    w.add_tensor("token_embd.weight", t(n_vocab, N_EMBD))
    for i in range(N_LAYER):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(N_EMBD, np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            w.add_tensor(f"blk.{i}.{name}.weight", t(N_EMBD, N_EMBD))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(N_EMBD, np.float32))
        w.add_tensor(f"blk.{i}.ffn_gate.weight", t(N_FF, N_EMBD))
        w.add_tensor(f"blk.{i}.ffn_up.weight", t(N_FF, N_EMBD))
        w.add_tensor(f"blk.{i}.ffn_down.weight", t(N_EMBD, N_FF))
    w.add_tensor("output_norm.weight", np.ones(N_EMBD, np.float32))
    w.add_tensor("output.weight", t(n_vocab, N_EMBD))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
