"""`media.ocr_images`: an image sent to a local model that cannot see reaches it as
the text an OCR worker reads from it."""

from __future__ import annotations

import base64

import anthropic

from tests.media_inputs import png, text_image

CONFIG = """
[media]
ocr_images = true

[[models]]
name = "fake"
backend = "fake"
[models.options]
reply_tokens = 40

[[models]]
name = "ocr"
backend = "ocr"
"""


def test_image_reaches_a_blind_local_model_as_ocr_text(turnout_factory) -> None:  # type: ignore[no-untyped-def]
    t = turnout_factory(CONFIG)
    image = base64.b64encode(png(text_image(["TURNOUT READS THIS"], width=700))).decode()
    c = anthropic.Anthropic(base_url=t.base_url, api_key=t.token, max_retries=0)
    msg = c.messages.create(model="fake", max_tokens=40, messages=[{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": image}},
        {"type": "text", "text": "what does it say?"}]}])
    text = msg.content[0].text  # type: ignore[union-attr]
    # the fake echoes the words of the last user turn: the OCR text is among them
    assert "TURNOUT" in text and "READS" in text, text
