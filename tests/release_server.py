"""A local stand-in for GitHub release downloads, serving the tiny test models.

Why: the model store downloads release archives by URL (pooch, SHA-256 checked). Tests must
exercise that path (download, redirect, checksum, unpack, layout detection) for the
catalog's *own* URLs without the network. This server answers the same URL paths as
github.com, and answers them as GitHub does: ``/<owner>/<repo>/releases/download/...`` and
``/<owner>/<repo>/archive/refs/tags/...`` redirect (302) to an asset URL on another host
(``objects.githubusercontent.com``; the same server's asset path for a client that is not
routed), which serves the bytes. Anything else is a 404.

:meth:`ReleaseServer.route_github_here` then maps those hosts to 127.0.0.1 inside
``requests`` (the transport pooch uses), so the catalog keeps its real ``https://github.com``
URLs and the test changes nothing but where the host name points.

    with ReleaseServer() as srv:
        srv.serve_catalog()                      # every catalog URL -> tests/data/models
        srv.route_github_here(monkeypatch)
        store.install("lesion_sci_t2")           # the real download path
        srv.requests                             # paths requested so far (for assertions)

It binds 127.0.0.1 on a free port, serves from a daemon thread and shuts down on exit.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

MODELS_DIR = Path(__file__).resolve().parent / "data" / "models"

#: Hosts a GitHub release download touches (the release page and its asset storage).
GITHUB_HOSTS = ("github.com", "objects.githubusercontent.com", "codeload.github.com")
ASSET_HOST = "objects.githubusercontent.com"
ASSET_PREFIX = "/github-production-release-asset"


class ReleaseServer:
    """Serve tests/data/models/<name>/<archive> at the GitHub release path it impersonates."""

    def __init__(self, models_dir: Path = MODELS_DIR, extra: dict[str, Path] | None = None):
        self.models_dir = Path(models_dir)
        self.manifest: dict = json.loads((self.models_dir / "manifest.json").read_text())
        #: URL path -> file on disk
        self.routes: dict[str, Path] = {
            e["url_path"]: self.models_dir / e["archive"]
            for e in self.manifest.values()
            if e.get("url_path") and e.get("archive")
        }
        self.routes.update({p: Path(f) for p, f in (extra or {}).items()})
        self.requests: list[str] = []
        #: True while route_github_here is in effect (redirects then go to the asset host)
        self.routed = False
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------
    def start(self) -> ReleaseServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server API
                self._serve(body=True)

            def do_HEAD(self):  # noqa: N802
                self._serve(body=False)

            def _serve(self, body: bool):
                path = self.path.split("?", 1)[0]
                server.requests.append(path)
                if path.startswith(ASSET_PREFIX):
                    f = server.routes.get(path[len(ASSET_PREFIX) :])
                    if f is not None and f.is_file():
                        self._send_file(f, body)
                        return
                elif path in server.routes:  # GitHub answers with a redirect to the asset
                    self.send_response(302)
                    self.send_header("Location", server.asset_location(path))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_error(404, "Not Found")

            def _send_file(self, f: Path, body: bool):
                data = f.read_bytes()
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Content-Disposition", f"attachment; filename={f.name}")
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def log_message(self, *args):  # keep test output quiet
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="release-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> ReleaseServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def asset_location(self, path: str) -> str:
        """Where a release path redirects: GitHub's asset host once routed here, else this
        server (so a plain ``urllib`` client, which cannot reach GitHub's hosts, follows)."""
        if self.routed:
            return f"https://{ASSET_HOST}{ASSET_PREFIX}{path}"
        return f"{ASSET_PREFIX}{path}"

    # -- routes -----------------------------------------------------------------------
    def serve(self, url: str, file: Path) -> None:
        """Serve ``file`` at the path of ``url`` (a real github.com URL)."""
        self.routes[urlsplit(url).path] = Path(file)

    def serve_catalog(self) -> dict[str, Path]:
        """Serve every catalog source URL from the tiny model laid out like its release.

        nnU-Net tasks: the manifest's archive for that exact URL; the 7T model: the GitHub
        source archive of its tag (``gm_sc_7t/<repo>-<tag>.zip``); TotalSpineSeg: the
        dataset zip with the same ``Dataset10N_`` prefix (the release tag follows the
        installed ``totalspineseg`` package, the layout does not). Returns url -> file.
        """
        from napari_spineseg import catalog

        by_url = {
            e["url"]: self.models_dir / e["archive"]
            for e in self.manifest.values()
            if e.get("url")
        }
        served = {}
        for task in catalog.tasks():
            for src in task.sources:
                served[src.url] = self._local_archive(src.url, by_url)
                self.serve(src.url, served[src.url])
        return served

    def _local_archive(self, url: str, by_url: dict[str, Path]) -> Path:
        if url in by_url:
            return by_url[url]
        parts = urlsplit(url).path.strip("/").split("/")
        name = parts[-1]
        if "archive" in parts:  # /<owner>/<repo>/archive/refs/tags/<tag>.zip
            found = self.models_dir / "gm_sc_7t" / f"{parts[1]}-{name}"
        else:
            prefix = name.split("_", 1)[0] + "_"
            found = next(
                iter(sorted((self.models_dir / "totalspineseg").glob(prefix + "*.zip"))), None
            )
        if found is None or not found.is_file():
            raise LookupError(f"no tiny test archive laid out like {url}")
        return found

    # -- client side ------------------------------------------------------------------
    def rewrite(self, url: str) -> str:
        """``https://github.com/x`` (or an asset host) -> ``http://127.0.0.1:<port>/x``."""
        parts = urlsplit(url)
        if parts.hostname not in GITHUB_HOSTS:
            return url
        host, port = self._httpd.server_address[:2]
        return urlunsplit(("http", f"{host}:{port}", parts.path, parts.query, ""))

    def route_github_here(self, monkeypatch) -> None:
        """Make ``requests`` (hence pooch) reach GitHub's hosts on this server, for a test."""
        import requests.adapters

        real_send = requests.adapters.HTTPAdapter.send

        def send(adapter, request, *args, **kwargs):
            request.url = self.rewrite(request.url)
            return real_send(adapter, request, *args, **kwargs)

        monkeypatch.setattr(requests.adapters.HTTPAdapter, "send", send)
        monkeypatch.setattr(self, "routed", True)

    # -- helpers ----------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("ReleaseServer is not running")
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def url_for(self, model: str) -> str:
        """Local URL of a model's archive (``model`` = manifest key, e.g. "sci_lesion")."""
        return self.base_url + self.manifest[model]["url_path"]

    def local_url(self, github_url: str) -> str:
        """Map a real ``https://github.com/...`` release URL onto this server."""
        prefix = "https://github.com"
        if not github_url.startswith(prefix):
            raise ValueError(f"not a github.com URL: {github_url}")
        return self.base_url + github_url[len(prefix) :]

    def sha256(self, model: str) -> str:
        return self.manifest[model]["sha256"]
