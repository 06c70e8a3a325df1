"""``newsletter preview N``: serve issue N at phone and desktop width, rebuilding on every save.

The page at ``/`` shows the built email in two iframes (375 px and 640 px
wide), the plain-text version, the subject, the HTML size against the budget
and the problems ``check`` would report. A background thread polls the issue
source, the templates and the config file; when one changes it rebuilds, and
the page, which polls ``/version``, reloads itself.

Why mtime polling rather than inotify (watchfiles): the watched set is one
file, one small folder and the config file, and it moves when the config
changes ``paths``. Watching the config's folder would mean watching the whole
project (``.venv`` included) recursively, and a watch on a single file loses
track of it when an editor saves by renaming a new file over it. A dozen
``stat`` calls a few times a second have none of those problems.

Why the watcher also hashes each file's content: most editors save in place
(truncate, then write), so a round can fall between the two and build from a
half-written file. That build is superseded only if the finished save looks
different from what the watcher last recorded, and ``stat`` alone cannot
promise that: where timestamps come from a clock tick (a few ms on many
Linux kernels, 2 s on FAT), two saves of the same length in one tick leave
mtime, size and inode unchanged, and the preview would keep the half-written
build's error until the next save. The content does differ, and the files
are a few dozen small ones, so reading them each round costs next to nothing.
"""

from __future__ import annotations

import hashlib
import html
import threading
import time
import traceback
import webbrowser
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from pipeline.check.gate import check_build
from pipeline.config import Config, load_config
from pipeline.errors import NewsletterError, PreviewError
from pipeline.issue.build import build_issue
from pipeline.issue.source import issue_path
from pipeline.send.ledger import campaign_state
from pipeline.send.message import html_size_as_sent, sample_as_sent

HOST = "127.0.0.1"  # never another interface: the preview shows unsent mail
PHONE_WIDTH = 375
DESKTOP_WIDTH = 640
POLL_SECONDS = 0.25
"""How often the watcher looks at the files, in seconds; the page asks ``/version`` half as often."""

RECENT_SECONDS = 3.0
"""A file modified less than this long ago may still change within the same timestamp tick (FAT's 2 s
granularity, plus a margin)."""

Entry = tuple[str, int, int, int, bytes, bool] | tuple[str]
Fingerprint = tuple[Entry, ...]


@dataclass(frozen=True)
class Snapshot:
    """One build's outcome. Replaced whole, never mutated, so request threads need no lock."""

    version: int
    config: Config
    """The config it was built with: the page's name and budget must match the build's problems."""
    subject: str = ""
    html: str = ""
    text: str = ""
    html_sent: int = 0
    """Bytes of the HTML part as sent (quoted-printable): what the clip budget counts, as in ``check``."""
    problems: tuple[tuple[str, str], ...] = ()
    """(severity, formatted line) for each problem ``check`` reports."""
    error: str = ""
    """The one-line error when the build failed; then the fields above are empty."""

    def same_output(self, other: Snapshot) -> bool:
        """Whether the page would look the same: then there is nothing to reload."""
        return (self.config, self.subject, self.html, self.text, self.problems, self.error) == (
            other.config,
            other.subject,
            other.html,
            other.text,
            other.problems,
            other.error,
        )


class PreviewServer:
    """An HTTP server on 127.0.0.1 plus a watcher thread; ``start()`` returns at once."""

    def __init__(
        self,
        config: Config,
        number: int,
        port: int = 0,
        log: Callable[[str], None] | None = None,
        poll_seconds: float = POLL_SECONDS,
    ) -> None:
        self.config = config
        self.number = number
        self._log = log or (lambda line: None)
        self._poll_seconds = poll_seconds
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._config_error = ""
        """Set while the config file does not load; the old config still says what to watch."""
        self.snapshot = Snapshot(version=0, config=config)
        try:
            self._httpd = ThreadingHTTPServer((HOST, port), _handler_for(self))
        except OSError as error:
            raise PreviewError(f"cannot listen on {HOST}:{port}: {error.strerror} (try --port 0)") from None
        self._httpd.daemon_threads = True  # an open tab must not keep the process alive

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/"

    def start(self) -> None:
        """Build once (so the first page load is ready), then serve and watch in background threads."""
        fingerprint = self._fingerprint()
        self.rebuild()
        self._threads = [
            # poll_interval: how long stop() waits for the serving loop to notice; 0.5 s by default.
            threading.Thread(
                target=self._httpd.serve_forever,
                kwargs={"poll_interval": 0.1},
                name="preview-http",
                daemon=True,
            ),
            threading.Thread(target=self._watch, args=(fingerprint,), name="preview-watch", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Stop whatever has started: a Ctrl-C can land between the two threads' starts."""
        self._stopping.set()
        started = [thread for thread in self._threads if thread.ident is not None]
        if any(thread.name == "preview-http" for thread in started):
            self._httpd.shutdown()  # waits for serve_forever to return; only valid once its thread runs
        self._httpd.server_close()
        for thread in started:
            # The watcher may be in the middle of a build, which can take seconds on a busy machine:
            # it is a daemon thread that checks the stop flag between rounds, so don't wait it out.
            thread.join(timeout=5 if thread.name == "preview-http" else 0.5)

    def rebuild(self) -> None:
        """Build the issue into a new snapshot; a failed build becomes an error page, never a crash."""
        previous = self.snapshot
        version, config = previous.version + 1, self.config
        try:
            if self._config_error:
                snapshot = Snapshot(version=version, config=config, error=self._config_error)
            else:
                snapshot = self._build(version, config)
        except NewsletterError as error:
            snapshot = Snapshot(version=version, config=config, error=str(error))
        except Exception as error:
            traceback.print_exc()
            message = f"unexpected {type(error).__name__}: {error} (a bug: traceback on the terminal)"
            snapshot = Snapshot(version=version, config=config, error=message)
        if previous.version and snapshot.same_output(previous):
            return  # e.g. an editor's swap file in the templates folder: keep the page as it is
        self.snapshot = snapshot
        self._log(_summary(snapshot))

    def _build(self, version: int, config: Config) -> Snapshot:
        built = build_issue(config, self.number, pinned=campaign_state(config, self.number) is not None)
        sent = html_size_as_sent(sample_as_sent(config, built.rendered))
        problems = check_build(config, built, sent)
        where = _relative(built.rendered.issue.path)
        return Snapshot(
            version=version,
            config=config,
            subject=built.rendered.issue.subject,
            html=built.html,
            text=built.text,
            html_sent=sent,
            problems=tuple((problem.severity, problem.format(where)) for problem in problems),
        )

    def _watch(self, fingerprint: Fingerprint) -> None:
        # The fingerprint is taken before each build, so one that read a save half-way is redone next
        # round: the finished save changes the content hash, if not the mtime or size.
        while not self._stopping.wait(self._poll_seconds):
            try:
                current = self._fingerprint()
                if current == fingerprint:
                    continue
                if current[0] != fingerprint[0]:  # the config file comes first
                    self._reload_config()
                fingerprint = current
                self.rebuild()
            except Exception:
                traceback.print_exc()

    def _reload_config(self) -> None:
        try:
            self.config = load_config(self.config.path)
            self._config_error = ""
        except NewsletterError as error:
            self._config_error = str(error)

    def _fingerprint(self) -> Fingerprint:
        """An entry for every watched file: any save changes its content hash, mtime, size or inode."""
        templates = self.config.paths.templates
        files = [self.config.path, issue_path(self.config.paths.issues, self.number)]
        if templates.is_dir():
            files += sorted(path for path in templates.rglob("*") if path.is_file())
        recent = time.time_ns() - int(RECENT_SECONDS * 1e9)
        return tuple(_entry(path, recent) for path in files)


def _entry(path: Path, recent: int) -> Entry:
    """Name, mtime, size, inode, content hash and whether the mtime is after ``recent`` (in ns)."""
    try:
        stat = path.stat()
        content = path.read_bytes()
    except OSError:  # missing for now (e.g. mid-save): its return is a change too
        return (str(path),)
    # The last field turns False once no save can share this mtime any more. That change triggers one
    # more build, for the one case the hash cannot see: a build that read a save half-way, when the
    # finished save wrote back the very bytes hashed before it, within the same tick.
    digest = hashlib.blake2b(content, digest_size=16).digest()
    return (str(path), stat.st_mtime_ns, stat.st_size, stat.st_ino, digest, stat.st_mtime_ns > recent)


def serve_preview(config: Config, number: int, port: int = 8000, open_browser: bool = False) -> None:
    """Serve until Ctrl-C."""
    server = PreviewServer(config, number, port=port, log=_print_log)
    try:
        # The socket already listens, so the URL works now; requests wait for the first build.
        print(f"Previewing issue {number} at {server.url} (Ctrl-C to stop)", flush=True)
        server.start()
        if open_browser:
            webbrowser.open(server.url)
        while True:
            time.sleep(3600)  # the work happens in the server's threads; sleep is Ctrl-C-interruptible
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


def _print_log(line: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {line}", flush=True)


def _summary(snapshot: Snapshot) -> str:
    if snapshot.error:
        return f"error: {snapshot.error}"
    return f"built: HTML part {snapshot.html_sent:,} bytes as sent, {len(snapshot.problems)} problem(s)"


def _relative(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


# --- HTTP ---------------------------------------------------------------------------------------


def _handler_for(server: PreviewServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            snapshot = server.snapshot  # one snapshot per request: the answer is consistent
            route = self.path.split("?", 1)[0]
            if route in ("/", "/index.html"):
                self._send(HTTPStatus.OK, "text/html", render_page(server.number, snapshot))
            elif route == "/version":
                self._send(HTTPStatus.OK, "text/plain", str(snapshot.version))
            elif route in ("/email.html", "/email.txt") and snapshot.error:
                self._send(HTTPStatus.SERVICE_UNAVAILABLE, "text/plain", snapshot.error)
            elif route == "/email.html":
                self._send(HTTPStatus.OK, "text/html", snapshot.html)
            elif route == "/email.txt":
                self._send(HTTPStatus.OK, "text/plain", snapshot.text)
            else:
                self._send(HTTPStatus.NOT_FOUND, "text/plain", "not found")

        def _send(self, status: HTTPStatus, kind: str, body: str) -> None:
            data = body.encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", f"{kind}; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")  # every reload must show the latest build
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            pass  # the page polls /version several times a second: logging each would drown the terminal

    return Handler


# --- The page -----------------------------------------------------------------------------------

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1rem; background: #f4f5f7; color: #1f2328; }
h1 { font-size: 1.1rem; margin: 0 0 .25rem; }
.meta { color: #59636e; margin: 0 0 .75rem; }
.over { color: #b3261e; font-weight: bold; }
.error { background: #fdecea; border: 1px solid #b3261e; padding: .75rem; white-space: pre-wrap; }
.problems li.error { background: none; border: 0; padding: 0; color: #b3261e; }
.problems li.warning { color: #8a5a00; }
.frames { display: flex; flex-wrap: wrap; gap: 1.5rem; align-items: flex-start; }
figure { margin: 0; }
figcaption { color: #59636e; margin-bottom: .25rem; }
iframe { border: 1px solid #d0d7de; background: #fff; height: 80vh; display: block; }
pre { background: #fff; border: 1px solid #d0d7de; padding: .75rem; max-width: 80ch; overflow-x: auto; }
"""

# Reload when the server has a newer build. A failed fetch (server stopped) just tries again later.
_SCRIPT = """
const version = document.body.dataset.version;
setInterval(async () => {
  try {
    const response = await fetch("/version", {cache: "no-store"});
    if ((await response.text()).trim() !== version) location.reload();
  } catch (error) {}
}, %d);
"""


def render_page(number: int, snapshot: Snapshot) -> str:
    """The preview page; every value from the issue, config or an error message is escaped."""
    e = html.escape
    config = snapshot.config
    title = f"Preview of issue {number}" + (f": {snapshot.subject}" if snapshot.subject else "")
    if snapshot.error:
        body = (
            f'<p class="error">{e(snapshot.error)}</p>\n'
            '<p class="meta">Fix it and save: the page reloads.</p>'
        )
    else:
        share = 100 * snapshot.html_sent / config.max_html_bytes
        size_class = ' class="over"' if snapshot.html_sent > config.max_html_bytes else ""
        size = (
            f"<span{size_class}>HTML part as sent {snapshot.html_sent:,} bytes: {share:.0f}% of the "
            f"{config.max_html_bytes:,}-byte budget</span>"
        )
        frames = "\n".join(
            f"<figure><figcaption>{label}, {width} px</figcaption>"
            # sandbox: no script in the email runs, as in a mail client; its links may open tabs.
            f'<iframe src="/email.html?v={snapshot.version}" width="{width}" title="{label} view" '
            f'sandbox="allow-popups allow-popups-to-escape-sandbox"></iframe></figure>'
            for label, width in (("Phone", PHONE_WIDTH), ("Desktop", DESKTOP_WIDTH))
        )
        body = (
            f'<p class="meta">Subject: <strong>{e(snapshot.subject)}</strong><br>{size}</p>\n'
            f"{_problem_list(snapshot.problems)}\n"
            f'<div class="frames">\n{frames}\n</div>\n'
            f'<h2>Plain text</h2>\n<pre id="text">{e(snapshot.text)}</pre>'
        )
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{e(title)}</title>
<style>{_STYLE}</style>
</head>
<body data-version="{snapshot.version}">
<h1>{e(config.name)}: issue {number}</h1>
{body}
<script>{_SCRIPT % int(POLL_SECONDS * 2000)}</script>
</body>
</html>
"""


def _problem_list(problems: tuple[tuple[str, str], ...]) -> str:
    if not problems:
        return '<p class="meta">No problems found.</p>'
    items = "\n".join(
        f'<li class="{html.escape(severity)}">{html.escape(line)}</li>' for severity, line in problems
    )
    return f'<ul class="problems">\n{items}\n</ul>'
