"""A local stand-in for GitHub release downloads, serving the tiny test models.

Why: the model store downloads release archives by URL (pooch, sha256 pinned). Tests must
exercise that path (download, checksum, unpack, layout detection) without the network, so
this server answers the *same URL paths* as github.com for the archives listed in
tests/data/models/manifest.json, e.g.
``/ivadomed/model_seg_sci/releases/download/r20240729/model_SCIsegV2_r20240729.zip``.
Anything else is a 404 (so a wrong URL fails like it would on GitHub).

    with ReleaseServer() as srv:
        url = srv.url_for("sci_lesion")          # http://127.0.0.1:<port>/ivadomed/...
        srv.requests                             # paths requested so far (for assertions)

It binds 127.0.0.1 on a free port, serves from a daemon thread and shuts down on exit.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parent / "data" / "models"


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
                f = server.routes.get(path)
                if f is None or not f.is_file():
                    self.send_error(404, "Not Found")
                    return
                data = f.read_bytes()
                self.send_response(200)
                self.send_header("Content-Type", "application/zip")
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
