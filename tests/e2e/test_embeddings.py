"""``/v1/embeddings`` through a real turnout: the bundled all-MiniLM-L6-v2 in an
``embed`` worker (loaded on the first request), checked against the similarities
sentence-transformers documents for this model; the OpenAI SDK's default (base64)
and float encodings; bad input; and cloud endpoints (OpenAI-shaped passed through,
Gemini translated)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import openai
import pytest
import urllib3

from tests.upstreams.fake import FakeUpstreams
from turnout.supervisor.launch import TurnoutProcess

CONFIG = """
[[models]]
name = "fake"
backend = "fake"

[[models]]
name = "minilm"
backend = "embed"
workers = 0
on_demand = true
aliases = ["text-embedding-*"]

[[endpoints]]
name = "oai"
provider = "openai"
base_url = "{url}/openai/v1"
[[endpoints.models]]
name = "text-embedding-3-small"

[[endpoints]]
name = "gem"
provider = "gemini"
base_url = "{url}/gemini"
[[endpoints.models]]
name = "text-embedding-004"
"""

# sentence-transformers' quick start, for this very model:
# tensor([[1.0000, 0.6660, 0.1046], [0.6660, 1.0000, 0.1411], [0.1046, 0.1411, 1.0000]])
SENTENCES = ["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."]
DOCUMENTED = np.array([[1.0, 0.6660, 0.1046], [0.6660, 1.0, 0.1411], [0.1046, 0.1411, 1.0]])


@pytest.fixture(scope="module")
def t(upstreams: FakeUpstreams, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TurnoutProcess]:
    tp = TurnoutProcess(CONFIG.format(url=upstreams.url), workdir=str(tmp_path_factory.mktemp("emb")),
                        env={"TURNOUT_KEY_OAI": upstreams.keys["openai"], "TURNOUT_KEY_GEM": upstreams.keys["gemini"]})
    tp.start()
    yield tp
    tp.stop()


def post(t: TurnoutProcess, body: dict[str, Any]) -> Any:
    return urllib3.request("POST", t.base_url + "/v1/embeddings", json=body, headers={"Authorization": f"Bearer {t.token}"})


def test_local_model_matches_the_documented_similarities(t: TurnoutProcess) -> None:
    c = openai.OpenAI(base_url=t.base_url + "/v1", api_key=t.token, max_retries=0)
    r = c.embeddings.create(model="text-embedding-3-small", input=SENTENCES)  # the SDK asks for base64
    v = np.array([d.embedding for d in r.data])
    assert v.shape == (3, 384) and [d.index for d in r.data] == [0, 1, 2]
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert np.abs(v @ v.T - DOCUMENTED).max() < 6e-4, np.round(v @ v.T, 4)
    # [CLS] and [SEP] around each sentence's WordPiece tokens ("it ' s" is three)
    assert r.usage.prompt_tokens == r.usage.total_tokens == 8 + 9 + 8
    assert r.model == "text-embedding-3-small"
    f = post(t, {"model": "minilm", "input": SENTENCES[0], "encoding_format": "float"}).json()
    assert np.allclose(f["data"][0]["embedding"], v[0], atol=1e-6) and f["model"] == "minilm"
    b = post(t, {"model": "minilm", "input": [SENTENCES[1]], "encoding_format": "base64"}).json()
    assert np.allclose(np.frombuffer(base64.b64decode(b["data"][0]["embedding"]), dtype="<f4"), v[1], atol=1e-6)


@pytest.mark.parametrize(("body", "param"), [
    ({"model": "minilm"}, "input"),
    ({"model": "minilm", "input": []}, "input"),
    ({"model": "minilm", "input": ["ok", ""]}, "input.1"),
    ({"model": "minilm", "input": [[101, 2023]]}, "input"),
    ({"model": "minilm", "input": "x", "encoding_format": "hex"}, "encoding_format"),
    ({"model": "minilm", "input": "x", "dimensions": 512}, "dimensions"),
    ({"model": "fake", "input": "x"}, "model"),
])
def test_bad_input_is_a_400_naming_the_field(t: TurnoutProcess, body: dict[str, Any], param: str) -> None:
    r = post(t, body)
    assert r.status == 400, r.data
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error", err


def test_cloud_endpoints(t: TurnoutProcess, upstreams: FakeUpstreams) -> None:
    r = post(t, {"model": "oai/text-embedding-3-small", "input": ["alpha", "beta gamma"], "dimensions": 8})
    assert r.status == 200, r.data
    out = r.json()
    assert [d["embedding"] for d in out["data"]] == [FakeUpstreams.vector_of("alpha"), FakeUpstreams.vector_of("beta gamma")]
    up = upstreams.requests[-1]
    assert up.path == "/openai/v1/embeddings" and up.auth_ok
    assert up.body == {"model": "text-embedding-3-small", "input": ["alpha", "beta gamma"], "dimensions": 8}
    g = post(t, {"model": "gem/text-embedding-004", "input": "delta"}).json()
    assert np.allclose(g["data"][0]["embedding"], FakeUpstreams.vector_of("delta"), atol=1e-6)
    assert upstreams.requests[-1].path.endswith("text-embedding-004:batchEmbedContents")
    assert upstreams.keys["openai"] not in json.dumps(out) + json.dumps(g)


def test_on_demand_worker_stays_for_the_next_request(t: TurnoutProcess) -> None:
    workers = [w for w in t.admin_workers() if w["model"] == "minilm"]
    assert len(workers) == 1 and workers[0]["state"] == "ready"


