"""The ocr backend in-process: rendered text comes back exactly, pages, bad input."""

from __future__ import annotations

import io
import shutil

import pytest
from PIL import Image

from tests.media_inputs import png, run_job, spec, text_image
from turnout.protocol import messages as m
from turnout.workers.base import BackendError, ModelLoadError
from turnout.workers.ocr import OcrBackend, create

LINES = ["The quick brown fox", "jumps over 13 lazy dogs", "Invoice #2041: $87.50"]


@pytest.fixture(scope="module")
def rapid() -> OcrBackend:
    b = create(spec("ocr"))  # type: ignore[arg-type]
    b.load()
    return b


def texts(outs: list[object]) -> list[str]:
    return [ln.text for o in outs if isinstance(o, m.JobOutput) for ln in o.lines]


def test_rendered_text_comes_back_exactly(rapid: OcrBackend) -> None:
    outs = run_job(rapid, m.OcrParams(), png(text_image(LINES)))
    assert texts(outs) == LINES
    assert isinstance(outs[-1], m.Done) and outs[-1].stop_reason == "end_turn"
    line = outs[0].lines[0]  # type: ignore[attr-defined]
    assert line.confidence > 0.9 and len(line.box) == 4


@pytest.mark.skipif(shutil.which("tesseract") is None, reason="tesseract-ocr is not installed")
def test_tesseract_engine_reads_the_same_text() -> None:
    b = create(spec("ocr", engine="tesseract"))  # type: ignore[arg-type]
    b.load()
    assert texts(run_job(b, m.OcrParams(), png(text_image(LINES[:2])))) == LINES[:2]


def test_each_page_of_a_tiff_is_one_output(rapid: OcrBackend) -> None:
    pages = [text_image(["page one here"], width=400), text_image(["and page two"], width=400)]
    buf = io.BytesIO()
    pages[0].save(buf, format="TIFF", save_all=True, append_images=pages[1:])
    outs = run_job(rapid, m.OcrParams(), buf.getvalue())
    assert [[ln.text for ln in o.lines] for o in outs[:-1]] == [["page one here"], ["and page two"]]  # type: ignore[attr-defined]
    # Closing the job after the first page (as a cancel does) stops before the second.
    assert len(run_job(rapid, m.OcrParams(), buf.getvalue(), stop_after=2)) == 1


@pytest.mark.parametrize("data, message", [
    (b"", "empty"),
    (b"not an image at all" * 4, "not an image"),
    (png(text_image(["x"]))[:200], "corrupt or truncated"),
])
def test_bad_input_is_a_clear_invalid_request(rapid: OcrBackend, data: bytes, message: str) -> None:
    with pytest.raises(BackendError) as e:
        run_job(rapid, m.OcrParams(), data or None)
    assert e.value.kind == "invalid_request" and message in e.value.message


def test_limits_are_too_large(rapid: OcrBackend) -> None:
    with pytest.raises(BackendError) as e:
        run_job(rapid, m.OcrParams(max_pixels=10_000), png(Image.new("RGB", (200, 100), "white")))
    assert e.value.kind == "too_large" and "200x100" in e.value.message and "10000" in e.value.message


def test_blank_page_has_no_lines(rapid: OcrBackend) -> None:
    outs = run_job(rapid, m.OcrParams(), png(Image.new("RGB", (300, 200), "white")))
    assert texts(outs) == [] and isinstance(outs[-1], m.Done)


def test_unknown_option_is_a_load_error() -> None:
    with pytest.raises(ModelLoadError, match="engin"):
        create(spec("ocr", engin="rapidocr"))  # type: ignore[arg-type]
