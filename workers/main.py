"""Entry point of a worker process: ``python -m turnout.workers.main``, its
:class:`WorkerSpec` as JSON on stdin (protocol/spawn.py: never on the command line).

The supervisor starts it (spawn, never fork); the backend
module is ``workers.<backend>`` and must provide ``create(spec) -> Backend``.
"""

from __future__ import annotations

import importlib
import os
import sys

import structlog

from turnout.protocol.config import BACKENDS
from turnout.protocol.exits import EXIT_ERROR, EXIT_MODEL_LOAD_ERROR
from turnout.protocol.logs import setup_logging
from turnout.protocol.spawn import read_spec
from turnout.protocol.specs import WorkerSpec
from turnout.workers.base import BACKEND_EXTRAS, ModelLoadError, missing_extra, run_worker


def main() -> int:
    spec = read_spec(WorkerSpec, "turnout.workers.main")
    # numpy/BLAS threads fight the model runtime for the same cores (MEASURED.md),
    # except where BLAS is the runtime: the embed worker's encoder is its GEMMs.
    blas = str(spec.options.get("threads") or os.cpu_count() or 1) if spec.backend == "embed" else "1"
    os.environ.setdefault("OPENBLAS_NUM_THREADS", blas)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    setup_logging(f"worker:{spec.id}")
    structlog.contextvars.bind_contextvars(worker=spec.id)
    log = structlog.get_logger()
    if spec.backend not in BACKENDS:
        log.error("unknown_backend", backend=spec.backend)
        return EXIT_MODEL_LOAD_ERROR
    try:
        mod = importlib.import_module(f"turnout.workers.{spec.backend}")
        backend = mod.create(spec)
    except ModelLoadError as e:
        log.error("model_load_failed", error=str(e))
        return EXIT_MODEL_LOAD_ERROR
    except ImportError as e:
        why = missing_extra(spec.backend, e) if spec.backend in BACKEND_EXTRAS else e
        log.error("backend_unavailable", backend=spec.backend, error=str(why))
        return EXIT_MODEL_LOAD_ERROR
    try:
        return run_worker(spec, backend)
    except Exception:
        log.exception("worker_crashed")
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
