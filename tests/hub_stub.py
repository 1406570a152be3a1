"""A tiny fake Hugging Face Hub for `convsum push` tests: answers the few API calls that
`HfApi.create_repo`, `create_branch` and `upload_folder` make, and records what it received.

Only what huggingface_hub actually calls is implemented (anything else is logged in `unknown`
and answered 404, so a new call shows up in test failures instead of passing silently):

    POST /api/repos/create                          {"name", "organization", "visibility"} -> {"url"}
    POST /api/models/{owner}/{name}/branch/{branch} -> 200
    POST /api/models/{owner}/{name}/preupload/{rev} -> {"files": [{"path", "uploadMode": "regular", ...}]}
    POST /api/models/{owner}/{name}/commit/{rev}    ndjson: header line, then one "file" line per file
    POST /api/validate-yaml                         README.md front matter check -> {"errors": [], "warnings": []}
    GET  /api/models/{owner}/{name}[/revision/{rev}] repo_info, asked after a 401/403 on create -> {"id", "sha"}

Every file is answered uploadMode "regular", so its bytes travel base64-encoded inside the commit
request and nothing goes to LFS or Xet storage (which this stub cannot emulate).
"""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

FAKE_TOKEN = "hf_stubtoken_0123456789"


class HubStub:
    def __init__(self, token: str = FAKE_TOKEN):
        self.token = token
        self.fail_all: int | None = None     # e.g. 401: every request is refused (bad token)
        self.fail_commit: int | None = None  # e.g. 403: the commit is refused (repo not writable)
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request, in order
        self.unknown: list[tuple[str, str]] = []
        self.repos: list[dict] = []     # {"repo_id", "private"}
        self.branches: list[dict] = []  # {"repo_id", "branch"}
        self.commits: list[dict] = []   # {"repo_id", "revision", "message", "files": {path: bytes}}
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- request handling; returns (status, json body) ------------------------------------------

    def handle(self, method: str, path: str, headers, body: bytes) -> tuple[int, dict]:
        with self.lock:
            self.requests.append((method, path))
        if self.fail_all:
            return self.fail_all, {"error": "Invalid credentials in Authorization header"}
        if headers.get("Authorization") != f"Bearer {self.token}":
            return 401, {"error": "Invalid credentials in Authorization header"}
        parts = [unquote(p) for p in path.split("/")]  # "", "api", "models", owner, name, action, rev...
        if method == "POST" and path == "/api/repos/create":
            payload = json.loads(body)
            repo_id = f"{payload['organization']}/{payload['name']}"
            with self.lock:
                self.repos.append({"repo_id": repo_id, "private": payload.get("visibility") == "private"})
            return 200, {"url": f"{self.url}/{repo_id}", "name": repo_id, "id": "stub"}
        if method == "POST" and path == "/api/validate-yaml":
            return 200, {"errors": [], "warnings": []}
        if len(parts) >= 5 and parts[1:3] == ["api", "models"]:
            repo_id, action, rev = f"{parts[3]}/{parts[4]}", parts[5] if len(parts) > 5 else "", "/".join(parts[6:])
            if method == "GET" and action in ("", "revision"):
                return 200, {"id": repo_id, "sha": "0" * 40, "siblings": []}
            if method == "POST" and action == "branch":
                with self.lock:
                    self.branches.append({"repo_id": repo_id, "branch": rev})
                return 200, {}
            if method == "POST" and action == "preupload":
                files = json.loads(body)["files"]
                return 200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None}
                                       for f in files]}
            if method == "POST" and action == "commit":
                if self.fail_commit:
                    return self.fail_commit, {"error": "You don't have the rights to create a commit in this repo"}
                return 200, self._commit(repo_id, rev, headers, body)
        with self.lock:
            self.unknown.append((method, path))
        return 404, {"error": f"stub: no route for {method} {path}"}

    def _commit(self, repo_id: str, rev: str, headers, body: bytes) -> dict:
        assert headers.get("Content-Type") == "application/x-ndjson", headers.get("Content-Type")
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        assert lines[0]["key"] == "header", lines[0]
        files = {}
        for line in lines[1:]:
            # Only inline files are expected: an "lfsFile" line would mean bytes went elsewhere.
            assert line["key"] == "file" and line["value"]["encoding"] == "base64", line["key"]
            files[line["value"]["path"]] = base64.b64decode(line["value"]["content"])
        oid = f"{len(self.commits) + 1:040x}"
        with self.lock:
            self.commits.append({"repo_id": repo_id, "revision": rev, "message": lines[0]["value"]["summary"],
                                 "files": files})
        return {"commitUrl": f"{self.url}/{repo_id}/commit/{oid}", "commitOid": oid, "success": True}


def _make_handler(stub: HubStub):
    class Handler(BaseHTTPRequestHandler):
        def _serve(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                status, payload = stub.handle(self.command, urlsplit(self.path).path, self.headers, body)
            except Exception as e:  # a malformed request: make it visible instead of hanging the client
                with stub.lock:
                    stub.unknown.append((self.command, f"{self.path} -> {e!r}"))
                status, payload = 400, {"error": f"stub: {e!r}"}
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = _serve

        def log_message(self, *args):  # keep pytest output clean
            pass

    return Handler
