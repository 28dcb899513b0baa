"""The ``ocr`` backend: text out of images.

Engines:

* ``rapidocr`` (default): RapidOCR's PP-OCR detection + recognition models on
  onnxruntime. The models ship inside the ``rapidocr`` wheel; nothing downloads.
* ``tesseract``: the ``tesseract`` command (Debian ``tesseract-ocr``), lighter in
  memory and faster on clean scans, weaker on photos. Run as a child process per
  page, so it needs no Python binding.

Options (``[models.options]``):

* ``engine = "rapidocr" | "tesseract"``
* ``limit_side_len = 960``: RapidOCR resizes a page so its longest side is at most
  this before detection (MEASURED.md: 960 keeps rendered text exact at ~1.6 s for
  820x240 on two cores);
* ``threads = 0``: onnxruntime intra-op threads (0: all cores);
* ``text_score = 0.5``: lines recognised with less confidence are dropped;
* ``tesseract_lang = "eng"``, ``tesseract_psm = 3``;
* ``max_concurrency = 2``: jobs interleaved page by page.

A job yields one ``JobOutput`` per page (its lines, top to bottom), so a multi-page
TIFF is cancellable between pages.
"""

from __future__ import annotations

import subprocess
from collections.abc import Generator
from typing import Any, Literal

import msgspec
import numpy as np
import zmq

from turnout.protocol import messages as m
from turnout.workers.base import (
    BackendError,
    GenContext,
    GenItem,
    ModelLoadError,
    WorkerSpec,
    missing_extra,
)
from turnout.workers.media import MediaBackend, input_bytes, open_images, parse_options


class OcrOptions(msgspec.Struct, forbid_unknown_fields=True):
    engine: Literal["rapidocr", "tesseract"] = "rapidocr"
    limit_side_len: int = 960
    threads: int = 0
    text_score: float = 0.5
    tesseract_lang: str = "eng"
    tesseract_psm: int = 3
    max_concurrency: int = 2


class OcrBackend(MediaBackend):
    kind = "ocr"

    def __init__(self, spec: WorkerSpec) -> None:
        self.opts = parse_options(spec, OcrOptions)
        super().__init__(spec, self.opts.max_concurrency)
        self._engine: Any = None

    def load(self) -> None:
        o = self.opts
        try:
            import PIL.Image  # noqa: F401  (every page is decoded with it, whatever the engine)
        except ImportError as e:
            raise missing_extra("ocr", e) from None
        if o.engine == "tesseract":
            try:
                subprocess.run(["tesseract", "--version"], capture_output=True, check=True, timeout=30)
            except (OSError, subprocess.SubprocessError):
                raise ModelLoadError("ocr engine 'tesseract' needs the tesseract command: "
                                     "apt-get install tesseract-ocr (or brew install tesseract)") from None
            return
        try:
            from rapidocr import RapidOCR
        except ImportError as e:
            raise missing_extra("ocr", e) from None
        params: dict[str, Any] = {
            "Global.log_level": "warning",
            "Global.text_score": o.text_score,
            # "max": shrink only pages larger than the limit; small text stays sharp.
            "Det.limit_type": "max",
            "Det.limit_side_len": o.limit_side_len,
        }
        if o.threads:
            params["EngineConfig.onnxruntime.intra_op_num_threads"] = o.threads
        try:
            self._engine = RapidOCR(params=params)
        except Exception as e:
            raise ModelLoadError(f"rapidocr failed to load its models: {e}") from None

    def recognise(self, page: Any, page_no: int = 0) -> list[m.OcrLine]:
        """The lines of one RGB page, top to bottom then left to right."""
        if self.opts.engine == "tesseract":
            return _tesseract(page, self.opts, page_no)
        out = self._engine(np.asarray(page.convert("RGB")))
        if out.txts is None or out.boxes is None:
            return []
        # RapidOCR already returns them in reading order.
        return [
            m.OcrLine(text=t, confidence=round(float(s), 4), box=[[float(x), float(y)] for x, y in b], page=page_no)
            for t, s, b in zip(out.txts, out.scores, out.boxes.tolist(), strict=True)
        ]


    def run_job(self, request_id: str, job: m.Job, frames: list[zmq.Frame], ctx: GenContext) -> Generator[GenItem, None, None]:
        p = job.params
        if not isinstance(p, m.OcrParams):
            raise BackendError("invalid_request", f"model {self.spec.model!r} is an ocr worker; it got a {type(p).__name__} job")
        data = input_bytes(frames)
        for n, page in enumerate(open_images(data, p.max_pixels, p.max_pages), start=1):
            lines = self.recognise(page, n - 1)
            # The page is done; the loop may cancel the job before the next one.
            yield m.JobOutput(request_id, 0, lines=lines, width=page.width, height=page.height, pages=n)
        yield m.Done(request_id, 0, "end_turn", m.Usage(0, 0))


def _tesseract(page: Any, o: OcrOptions, page_no: int) -> list[m.OcrLine]:
    import io

    buf = io.BytesIO()
    page.convert("RGB").save(buf, format="PNG")
    try:
        r = subprocess.run(["tesseract", "stdin", "stdout", "-l", o.tesseract_lang, "--psm", str(o.tesseract_psm), "tsv"],
                           input=buf.getvalue(), capture_output=True, timeout=300)
    except subprocess.TimeoutExpired:
        raise BackendError("internal", "tesseract took more than 300 s on one page") from None
    if r.returncode != 0:
        raise BackendError("internal", f"tesseract failed: {r.stderr.decode(errors='replace').strip()[:300]}")
    # TSV: level page block par line word left top width height conf text; words
    # (level 5) are grouped back into their lines.
    groups: dict[tuple[str, str, str], list[list[str]]] = {}
    for row in r.stdout.decode(errors="replace").splitlines()[1:]:
        cols = row.split("\t")
        if len(cols) < 12 or cols[0] != "5" or not cols[11].strip():
            continue
        groups.setdefault((cols[2], cols[3], cols[4]), []).append(cols)
    lines = []
    for words in groups.values():
        x0 = min(int(w[6]) for w in words)
        y0 = min(int(w[7]) for w in words)
        x1 = max(int(w[6]) + int(w[8]) for w in words)
        y1 = max(int(w[7]) + int(w[9]) for w in words)
        conf = sum(max(0.0, float(w[10])) for w in words) / len(words) / 100
        if conf < o.text_score:
            continue
        text = " ".join(w[11].strip() for w in words)
        lines.append(m.OcrLine(text=text, confidence=round(conf, 4),
                               box=[[x0, y0], [x1, y0], [x1, y1], [x0, y1]], page=page_no))
    return lines


def create(spec: WorkerSpec) -> OcrBackend:
    return OcrBackend(spec)
