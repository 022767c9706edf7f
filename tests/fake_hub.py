"""A small Hugging Face Hub for the tests, on 127.0.0.1 (port 0), in a thread.

It speaks enough of the Hub's HTTP API for huggingface_hub's own `whoami`, `create_repo`,
`repo_info`, `auth_check`, `create_commit` / `upload_folder` and `hf_hub_download`. As on the
real Hub, the preupload answer decides how a file travels: files ending in `lfs_suffixes`
(default `.pt`) go by the basic git-LFS transfer (batch, PUT, then an `lfsFile` commit line),
the rest base64-encoded inside the NDJSON commit. It has no Xet storage: set
`huggingface_hub.constants.HF_HUB_DISABLE_XET = True` so the client uses plain LFS.

    GET  /api/whoami-v2
    POST /api/repos/create
    GET  /api/models/NS/NAME[/revision/REV]          repo info (head commit sha, files)
    GET  /api/models/NS/NAME/auth-check[/write]
    POST /api/models/NS/NAME/preupload/REV           upload mode and remote oid of each file
    POST /NS/NAME.git/info/lfs/objects/batch         LFS batch: where to PUT each new object
    PUT  /lfs-objects/SHA256                         the object's bytes
    POST /api/models/NS/NAME/commit/REV              NDJSON: header, file, lfsFile, deletedFile
    POST /api/validate-yaml                          the README front matter must parse
    HEAD|GET /NS/NAME/resolve/REV/PATH               X-Repo-Commit, ETag, Content-Length

    with FakeHub(tokens={"hf_w": FakeUser("alice")}) as hub:
        HfApi(endpoint=hub.url, token="hf_w").whoami()

State is plain Python the tests read: `hub.repos[repo_id].commits` (the first is the
'initial commit' a new repo gets), `.files`, `hub.requests` (method, route, path, status).
`hub.fail_next(route, status, times=1)` answers the next requests of a route with an error.
Errors carry the Hub's X-Error-Code / X-Error-Message headers, so the client raises its own
named exceptions (RepositoryNotFoundError, RemoteEntryNotFoundError, ...).
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

import yaml

GITATTRIBUTES = b"*.pt filter=lfs diff=lfs merge=lfs -text\n"


def git_sha1(data: bytes) -> str:
    """The git blob hash (`git hash-object`), which the client compares for regular files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class FakeUser:
    name: str
    role: str = "write"                 # 'write', 'read' or 'fineGrained'
    orgs: list[str] = field(default_factory=list)
    write_namespaces: list[str] | None = None  # fineGrained: where it may write (default none)

    def can_write(self, namespace: str) -> bool:
        if self.role == "read":
            return False
        if self.role == "fineGrained":
            return namespace in (self.write_namespaces or [])
        return namespace == self.name or namespace in self.orgs


@dataclass
class FakeRepo:
    repo_id: str
    private: bool = False
    commits: list[dict] = field(default_factory=list)  # {'oid', 'title', 'files', 'changed'}

    @property
    def head(self) -> dict:
        return self.commits[-1]

    @property
    def files(self) -> dict[str, bytes]:
        return self.head["files"]

    def commit(self, title: str, files: dict[str, bytes], changed: list[str]) -> str:
        oid = hashlib.sha1(f"{self.repo_id}:{len(self.commits)}:{title}".encode()
                           + os.urandom(8)).hexdigest()
        self.commits.append({"oid": oid, "title": title, "files": files, "changed": changed})
        return oid

    def at(self, revision: str) -> dict | None:
        if revision == "main":
            return self.head
        return next((c for c in self.commits if c["oid"] == revision), None)


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None,
                 headers: dict | None = None, body: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.headers, self.body = headers or {}, body or {}


REPO = r"(?P<repo>[^/]+/[^/]+)"
ROUTES = [  # (method, name, pattern)
    ("GET", "whoami", r"/api/whoami-v2"),
    ("POST", "create", r"/api/repos/create"),
    ("POST", "validate_yaml", r"/api/validate-yaml"),
    ("GET", "auth_check", rf"/api/models/{REPO}/auth-check(?P<write>/write)?"),
    ("POST", "preupload", rf"/api/models/{REPO}/preupload/(?P<rev>[^/]+)"),
    ("POST", "commit", rf"/api/models/{REPO}/commit/(?P<rev>[^/]+)"),
    ("POST", "lfs_batch", rf"/{REPO}\.git/info/lfs/objects/batch"),
    ("PUT", "lfs_put", r"/lfs-objects/(?P<oid>[0-9a-f]{64})"),
    ("GET", "repo_info", rf"/api/models/{REPO}(?:/revision/(?P<rev>[^/]+))?"),
    ("HEAD", "resolve", rf"/{REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)"),
    ("GET", "resolve", rf"/{REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)"),
]


class FakeHub:
    def __init__(self, tokens: dict[str, FakeUser] | None = None, *,
                 lfs_suffixes: tuple[str, ...] = (".pt",)):
        self.tokens = dict(tokens or {})
        self.lfs_suffixes = lfs_suffixes
        self.lfs_objects: dict[str, bytes] = {}  # sha256 hex -> bytes
        self.repos: dict[str, FakeRepo] = {}
        self.requests: list[tuple[str, str, str, int]] = []
        self._failures: list[tuple[str, int]] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- life cycle --------------------------------------------------------------------
    def start(self) -> "FakeHub":
        hub = self

        class Handler(_Handler):
            pass
        Handler.hub = hub
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "FakeHub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # -- test helpers ------------------------------------------------------------------
    def add_repo(self, repo_id: str, files: dict[str, bytes] | None = None, *,
                 private: bool = False) -> FakeRepo:
        """A repo as the Hub creates it (initial commit with .gitattributes), plus `files`."""
        repo = FakeRepo(repo_id, private=private)
        repo.commit("initial commit", {".gitattributes": GITATTRIBUTES}, [".gitattributes"])
        if files:
            repo.commit("existing files", {**repo.files, **files}, sorted(files))
        self.repos[repo_id] = repo
        return repo

    def fail_next(self, route: str, status: int, *, times: int = 1) -> None:
        """Answer the next `times` requests to `route` (a name in ROUTES) with `status`."""
        with self._lock:
            self._failures.extend([(route, status)] * times)

    def count(self, route: str, method: str | None = None) -> int:
        return sum(1 for m, r, _, _ in self.requests if r == route and (method in (None, m)))

    # -- request handling (called from the server threads) -----------------------------
    def handle(self, method: str, path: str, headers, body: bytes) -> tuple[int, dict, bytes]:
        route, params = _match(method, path)
        try:
            if route is None:
                raise HubError(404, f"fake hub: no route for {method} {path}")
            with self._lock:
                injected = next((i for i, (r, _) in enumerate(self._failures) if r == route), None)
                if injected is not None:
                    status = self._failures.pop(injected)[1]
                    raise HubError(status, f"injected HTTP {status} on {route}")
                status, out_headers, out = getattr(self, f"_{route}")(
                    method, params, self._user(headers), body)
        except HubError as e:
            status = e.status
            out_headers = {"X-Error-Message": e.message, **e.headers}
            if e.code:
                out_headers["X-Error-Code"] = e.code
            out_headers["Content-Type"] = "application/json"
            out = json.dumps({"error": e.message, **e.body}).encode()
        self.requests.append((method, route or "?", path, status))
        return status, out_headers, out

    def _user(self, headers) -> FakeUser | None:
        auth = headers.get("Authorization") or ""
        if not auth:
            return None
        token = auth.removeprefix("Bearer ").strip()
        if token not in self.tokens:
            raise HubError(401, "Invalid credentials in Authorization header")
        return self.tokens[token]

    def _visible(self, repo_id: str, user: FakeUser | None) -> FakeRepo:
        repo = self.repos.get(repo_id)
        if repo is None or (repo.private and not (user and user.can_write(repo_id.split("/")[0]))):
            raise HubError(404, "Repository not found", "RepoNotFound")
        return repo

    @staticmethod
    def _need_user(user: FakeUser | None) -> FakeUser:
        if user is None:
            raise HubError(401, "You must be authenticated to do this")
        return user

    def _need_write(self, repo_id: str, user: FakeUser | None) -> FakeRepo:
        user = self._need_user(user)
        repo = self._visible(repo_id, user)
        if not user.can_write(repo_id.split("/")[0]):
            raise HubError(403, f"You don't have write access to {repo_id}")
        return repo

    # -- routes ------------------------------------------------------------------------
    def _whoami(self, method, params, user, body):
        user = self._need_user(user)
        info = {"type": "user", "name": user.name, "fullname": user.name.title(),
                "orgs": [{"name": o, "roleInOrg": "write"} for o in user.orgs],
                "auth": {"type": "access_token",
                         "accessToken": {"displayName": "test token", "role": user.role}}}
        return _json(200, info)

    def _create(self, method, params, user, body):
        user = self._need_user(user)
        req = json.loads(body or b"{}")
        namespace = req.get("organization") or user.name
        repo_id = f"{namespace}/{req['name']}"
        if not user.can_write(namespace):
            raise HubError(403, f'You don\'t have the rights to create a model under the namespace '
                                f'"{namespace}"')
        if repo_id in self.repos:
            raise HubError(409, "You already created this model repo",
                           body={"url": f"{self.url}/{repo_id}"})
        self.add_repo(repo_id, private=req.get("visibility") == "private")
        return _json(200, {"url": f"{self.url}/{repo_id}", "name": repo_id})

    def _validate_yaml(self, method, params, user, body):
        content = json.loads(body)["content"]
        m = re.match(r"---\n(.*?)\n---\n", content, re.S)
        try:
            meta = yaml.safe_load(m.group(1)) if m else None
        except yaml.YAMLError as e:
            meta = f"YAML error: {e}"
        if not isinstance(meta, dict):
            return _json(400, {"errors": [{"message": f"invalid metadata: {meta!r}"}],
                               "warnings": []})
        return _json(200, {"errors": [], "warnings": []})

    def _auth_check(self, method, params, user, body):
        if params["write"]:
            self._need_write(params["repo"], user)
        else:
            self._visible(params["repo"], user)
        return _json(200, {})

    def _repo_info(self, method, params, user, body):
        repo = self._visible(params["repo"], user)
        commit = repo.at(params["rev"] or "main")
        if commit is None:
            raise HubError(404, "Invalid rev id", "RevisionNotFound")
        return _json(200, {"id": repo.repo_id, "author": repo.repo_id.split("/")[0],
                           "sha": commit["oid"], "private": repo.private,
                           "siblings": [{"rfilename": p} for p in sorted(commit["files"])]})

    def _preupload(self, method, params, user, body):
        repo = self._need_write(params["repo"], user)
        files = json.loads(body)["files"]
        out = [{"path": f["path"], "uploadMode": "lfs" if self._is_lfs(f["path"]) else "regular",
                "shouldIgnore": False, "oid": self._oid(f["path"], repo.files.get(f["path"]))}
               for f in files]
        return _json(200, {"files": out, "commitOid": repo.head["oid"]})

    def _is_lfs(self, path: str) -> bool:
        return path.endswith(self.lfs_suffixes)

    def _oid(self, path: str, data: bytes | None) -> str | None:
        """What the client compares its local oid with: sha256 for LFS, the git blob hash else."""
        if data is None:
            return None
        return hashlib.sha256(data).hexdigest() if self._is_lfs(path) else git_sha1(data)

    def _lfs_batch(self, method, params, user, body):
        self._need_write(params["repo"], user)
        objects = []
        for obj in json.loads(body)["objects"]:
            entry = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in self.lfs_objects:  # no 'actions': already stored, skipped
                entry["actions"] = {"upload": {"href": f"{self.url}/lfs-objects/{obj['oid']}"}}
            objects.append(entry)
        return _json(200, {"transfer": "basic", "objects": objects})

    def _lfs_put(self, method, params, user, body):
        if hashlib.sha256(body).hexdigest() != params["oid"]:
            raise HubError(400, "LFS object does not match its sha256")
        self.lfs_objects[params["oid"]] = body
        return 200, {}, b""

    def _commit(self, method, params, user, body):
        repo = self._need_write(params["repo"], user)
        if params["rev"] != "main":
            raise HubError(400, f"the fake hub commits to 'main' only, not {params['rev']!r}")
        lines = [json.loads(x) for x in body.decode().splitlines() if x.strip()]
        if not lines or lines[0]["key"] != "header":
            raise HubError(400, "the commit payload must start with a header line")
        files, changed = dict(repo.files), []
        for line in lines[1:]:
            key, value = line["key"], line["value"]
            if key == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "lfsFile":
                if value["oid"] not in self.lfs_objects:
                    raise HubError(400, f"LFS object {value['oid']} was never uploaded")
                files[value["path"]] = self.lfs_objects[value["oid"]]
            elif key in ("deletedFile", "deletedFolder"):
                for p in [p for p in files if p == value["path"] or
                          p.startswith(value["path"].rstrip("/") + "/")]:
                    del files[p]
            else:
                raise HubError(400, f"the fake hub does not take {key!r} lines")
            changed.append(value["path"])
        oid = repo.commit(lines[0]["value"]["summary"], files, changed)
        return _json(200, {"commitUrl": f"{self.url}/{repo.repo_id}/commit/{oid}",
                           "commitOid": oid, "pullRequestUrl": None, "success": True})

    def _resolve(self, method, params, user, body):
        repo = self._visible(params["repo"], user)
        commit = repo.at(params["rev"])
        if commit is None:
            raise HubError(404, "Invalid rev id", "RevisionNotFound")
        data = commit["files"].get(params["path"])
        if data is None:
            raise HubError(404, "Entry not found", "EntryNotFound",
                           headers={"X-Repo-Commit": commit["oid"]})
        headers = {"X-Repo-Commit": commit["oid"], "ETag": f'"{self._oid(params["path"], data)}"',
                   "Content-Type": "application/octet-stream"}
        return 200, headers, data  # for HEAD the handler sends the length, not the body


def _json(status: int, obj) -> tuple[int, dict, bytes]:
    return status, {"Content-Type": "application/json"}, json.dumps(obj).encode()


def _match(method: str, path: str) -> tuple[str | None, dict]:
    path = urlsplit(path).path
    for m, name, pattern in ROUTES:
        hit = re.fullmatch(pattern, path)
        if m == method and hit:
            return name, {k: (unquote(v) if v else v) for k, v in hit.groupdict().items()}
    return None, {}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the client's connection pool expects
    hub: FakeHub

    def log_message(self, *args) -> None:  # quiet
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _serve(self) -> None:
        status, headers, body = self.hub.handle(self.command, self.path, self.headers,
                                                self._body())
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_HEAD = do_PUT = do_DELETE = _serve
