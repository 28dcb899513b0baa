"""The chat layer the local backends (llama.cpp, MLX) share.

* :func:`detect` loads a model's chat template (or one of turnout's own, for a
  model without one) and picks the family that reads its answers:
  :func:`workers.formats.render.load_template`, plus the end-of-turn strings of
  turnout's built-in formats.
* :func:`render` writes the prompt for a request: :func:`workers.formats.render.render`.
* :class:`ChatOptions`: the options every local chat backend takes.

How each family writes and reads conversations lives in :mod:`workers.formats`.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from turnout.protocol.chat import ChatRequest
from turnout.workers.formats import render as fr
from turnout.workers.formats.jinja_env import TemplateError
from turnout.workers.formats.render import (
    CHAT_FORMATS,
    Rendered,
    Template,
    json_instruction,
    normalise,
)

__all__ = ["CHAT_FORMATS", "ChatOptions", "Rendered", "Template", "TemplateError", "TemplateInfo", "detect",
           "json_instruction", "normalise", "render"]

TemplateInfo = Template

# Strings that end the assistant's turn in each of turnout's built-in formats,
# beyond the model's own end-of-generation tokens: a base model happily writes
# the next turn.
_FAMILY_STOPS: dict[str, list[str]] = {
    "gemma": ["<end_of_turn>", "<start_of_turn>"],
    "chatml": ["<|im_end|>", "<|im_start|>"],
    "llama3": ["<|eot_id|>", "<|eom_id|>", "<|start_header_id|>"],
    "mistral": ["</s>", "[INST]"],
}

# What a BASE model (no chat template in its weights' file) ends its turn with by
# default, besides its family's markers above: such a model never writes an
# end-of-turn token; it continues the text. Measured on the default model (Gemma 3
# 270M base) after ``<start_of_turn>model\n``, sampled as Claude Code gets it
# (temperature 0.8): on Claude Code's real ~19.5k-token request (12 samples) and on
# six short questions with and without a system prompt (48 samples) it never wrote
# <end_of_turn>; its first line is its answer when it answers ("The capital of
# France is Paris."), then it repeats that line or makes up more questions, line
# after line, mostly without a blank line (8 of the 12 Claude Code samples had none
# in 200 tokens, so "\n\n" would run them to the window); every first line ended
# within 80 tokens. So a base model's turn is one line. Other families' base
# models continue text the same way and get the same default. ``[models.options]
# stop`` replaces it (``stop = []``: none).
BASE_MODEL_STOPS: dict[str, list[str]] = {
    "gemma": ["\n"],
}
BASE_MODEL_STOPS_OTHER: list[str] = ["\n"]


def extra_stops(stop: list[str] | None, family: str, base_model: bool) -> list[str]:
    """End-of-turn strings beyond the template's own (``Rendered.stop``): the
    ``stop`` option when set (``[]``: none), else a base model's defaults
    (:data:`BASE_MODEL_STOPS`), else none: an instruction model ends its turn
    with its template's end-of-generation token."""
    if stop is not None:
        return list(stop)
    if not base_model:
        return []
    return list(BASE_MODEL_STOPS.get(family, BASE_MODEL_STOPS_OTHER))


def detect(
    chat_template: str,
    architecture: str,
    *,
    bos_token: str = "",
    eos_token: str = "",
    chat_format: str = "",
    tool_format: str = "",
    tool_detail: str = "",
) -> Template:
    """The model's template and family. ``chat_format``/``tool_format`` override.
    Raises ValueError for a bad option or a template that does not parse."""
    try:
        tpl = fr.load_template(chat_template, architecture, bos_token=bos_token, eos_token=eos_token,
                               chat_format=chat_format, tool_format=tool_format, tool_detail=tool_detail)
    except TemplateError as e:
        raise ValueError(str(e)) from None
    stops = list(_FAMILY_STOPS.get(tpl.chat_format, []))
    if tpl.chat_format == "gguf":
        # a template written in a known format ends turns the same way
        for marks in _FAMILY_STOPS.values():
            if any(mk in chat_template for mk in marks):
                stops.extend(marks)
    tpl.stops = list(dict.fromkeys([*stops, *tpl.stops]))
    return tpl


def render(req: ChatRequest, info: Template, *, now: datetime | None = None) -> Rendered:
    """The prompt for ``req`` (ending where the assistant's answer starts)."""
    return fr.render(req, info, now=now)


class ChatOptions(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Options every local chat backend (llama_cpp, mlx_lm) takes.

    ``chat_format``/``tool_format``: override template detection. ``tool_detail``:
    how tools are written into a prompt whose template does not describe them
    (``full`` JSON specs or ``brief``, a line each); unset, ``brief`` for a model
    with no chat template (a base model), ``full`` otherwise. ``stop``: more
    strings that end the model's turn (like Ollama's ``stop`` parameter), besides
    the template's markers. Unset, a base model (no chat template) gets its family's
    defaults (:data:`BASE_MODEL_STOPS`: it does not end its turns by itself, so
    without one every answer runs to max_tokens or the window); a list replaces
    them, ``[]`` turns them off. A grammar-forced tool call or a structured-output
    answer is never cut by these (its grammar ends it).
    ``seed``: sampling seed (-1: random). ``force_tool``: a test/debug knob, not for
    normal use: a request that offers a tool of this name and ends with the user's
    own text is answered as if ``tool_choice`` named that tool, so a base model
    drives a whole tool round trip (see :func:`workers.tool_calls.effective_choice`).
    ``forced_string_max_chars``: another test knob: string arguments of a forced
    call are at most this long where the tool's schema sets no bound (a random-
    weight model would otherwise rarely close a tagged argument).
    The rest are sampling defaults used when the request does not set them."""

    chat_format: str = ""
    tool_format: str = ""
    tool_detail: str = ""
    seed: int = -1
    force_tool: str = ""
    forced_string_max_chars: int = 0
    stop: list[str] | None = None
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.0
