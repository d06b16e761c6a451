"""Hub ids without a network: one quick question to the hub, then the local cache or a clear error.

``from_pretrained`` alone retries every file 5 times with back-off: about 70 s before it fails when
the hub cannot be reached. A stub hub on localhost stands in for huggingface.co (``HF_ENDPOINT``):
it drops the connection for every model but ``owner/missing``, for which it answers as the hub
does for a model that does not exist. It counts the requests it gets: one per load, no retries.
The loads run in a child process, since huggingface_hub reads its endpoint and cache at import.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tinymodels import minilm_tokenizer, tiny_bert_model

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import json, sys
from ttmoe_core.base import backbone, sources as models
out = {}
for repo in sys.argv[1:]:
    try:
        loaded = backbone.load_backbone(repo)
        out[repo] = {"hidden_size": loaded.info.hidden_size, "name": loaded.info.name}
    except backbone.BackboneError as exc:
        out[repo] = {"error": str(exc)}
if "--probe" in sys.argv:    # the question alone, for answers the loads above do not meet
    for repo in ("owner/online", "owner/broken", "foo bar"):
        try:
            out["probe " + repo] = models.hub_unreachable(repo)
        except models.ModelError as exc:
            out["probe " + repo] = "ModelError: " + str(exc)
print(json.dumps(out))
"""


class _StubHub(BaseHTTPRequestHandler):
    requests: list[str] = []

    def _answer(self):
        type(self).requests.append(self.path)
        if "owner/missing" in self.path:        # as the hub answers for a model it does not have
            self._send(404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"})
        elif "owner/online" in self.path:
            self._send(200, b'{"id": "owner/online", "sha": "' + b"1" * 40 + b'"}')
        elif "owner/broken" in self.path:       # as a proxy that cannot reach the hub
            self._send(503, b'{"error": "upstream unreachable"}')
        else:                       # as a dead network: the connection ends without an answer
            self.close_connection = True

    def _send(self, status: int, body: bytes, headers: dict | None = None):
        self.send_response(status)
        for key, value in {"Content-Type": "application/json", **(headers or {})}.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_HEAD = _answer

    def log_message(self, *args):
        pass


def _cache_model(cache: Path, repo: str) -> None:
    """``repo`` in the Hugging Face cache layout (refs/main → one snapshot): a tiny BERT."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    snapshot = folder / "snapshots" / ("0" * 40)
    tiny_bert_model(seed=3).save_pretrained(snapshot)
    minilm_tokenizer().save_pretrained(snapshot)
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("0" * 40)


def _run_child(args: list[str], cache: Path, **extra: str) -> tuple[dict, list[str]]:
    """Run CHILD against a fresh stub hub; (its JSON, the paths the stub was asked, sorted)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _StubHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _StubHub.requests = []
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE") and not k.lower().endswith("_proxy")}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{server.server_address[1]}", HF_HUB_CACHE=str(cache),
               HF_HUB_DISABLE_TELEMETRY="1", NO_PROXY="127.0.0.1,localhost", **extra)
    try:
        done = subprocess.run([sys.executable, "-c", CHILD, *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=300)
    finally:
        server.shutdown()
        server.server_close()
    assert done.returncode == 0, done.stderr[-2000:]
    return (json.loads(done.stdout.strip().splitlines()[-1]),
            sorted(path.split("?")[0] for path in _StubHub.requests))


def test_hub_ids_load_from_the_cache_or_fail_at_once_without_a_network(tmp_path):
    _cache_model(tmp_path / "cache", "owner/cached")
    out, asked = _run_child(["owner/cached", "owner/uncached", "owner/missing", "--probe"],
                            tmp_path / "cache")
    # cached: loads from the snapshot folder, named as asked
    assert out["owner/cached"] == {"hidden_size": 48, "name": "owner/cached"}
    assert "the hub cannot be reached" in out["owner/uncached"]["error"]
    assert "not in the local cache" in out["owner/uncached"]["error"]
    assert out["owner/missing"]["error"].startswith("no model 'owner/missing' on the hub")
    # the question alone: an answer means reachable, a 5xx (a proxy cut off) does not, and an id
    # the hub cannot hold is said to be one, not blamed on the network
    assert out["probe owner/online"] is None
    assert out["probe owner/broken"] == "it answered 503"
    assert out["probe foo bar"].startswith("ModelError: 'foo bar' is not a model folder")
    # one question per load and no retries (from_pretrained alone: 5 tries per file)
    assert asked == ["/api/models/owner/broken", "/api/models/owner/cached",
                     "/api/models/owner/missing", "/api/models/owner/online",
                     "/api/models/owner/uncached"]


def test_hub_offline_loads_the_cache_without_asking(tmp_path):
    _cache_model(tmp_path / "cache", "owner/cached")
    out, asked = _run_child(["owner/cached", "owner/uncached"], tmp_path / "cache",
                            HF_HUB_OFFLINE="1")
    assert out["owner/cached"] == {"hidden_size": 48, "name": "owner/cached"}
    assert "HF_HUB_OFFLINE is set" in out["owner/uncached"]["error"]
    assert asked == []
