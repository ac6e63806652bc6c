"""The console's routes: server-rendered pages (Jinja2, autoescaped), SVG, JSON, metrics.

::

    GET  /                      Now: health in one line, rates, backlog, backend, uptime
    GET  /wafer                 every section a grid of positions coloured by verdict
    GET  /tile/{id}             one tile version: thumbnail, focus map, history, reason
    GET  /tile/{id}/thumb.png   its thumbnail (only versions the ledger knows, never a path)
    GET  /tile/{id}/crop.png    its worst patch at full resolution
    GET  /retakes[.csv|.json]   the retake list, ?section=&status=
    POST /retakes/{id}/{dismiss|reopen}   needs web.token, same origin and the session's token
    GET  /alerts                the alert outbox: sent and waiting
    GET  /api/generation        changes when anything shown changed (the pages poll it)
    GET  /healthz               200 healthy, 503 and the reason
    GET  /metrics               Prometheus text

Security model: read-only without ``web.token``. A change (dismiss, reopen) is a form
POST that must carry the token, come from a page of this server (``Origin`` or, without
it, ``Referer`` naming this host) and carry the per-session CSRF token the page was
rendered with (an HMAC of the session cookie under a key made at start). Every name and
reason is escaped (Jinja2 autoescape); alert endpoints appear only redacted.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import io
import json
import math
import os
import secrets
import stat
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import jinja2
import numpy as np
from markupsafe import Markup
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

import focuswatch
from focuswatch import retakes
from focuswatch.text import printable
from focuswatch.verdict import position_words
from focuswatch.web import metrics, svg
from focuswatch.web.data import VERDICTS, Console
from focuswatch.web.hosts import HostCheck

__all__ = ["SESSION_COOKIE", "build_app", "compile_templates", "worst_patch_crop"]

SESSION_COOKIE = "fw_session"
_HERE = Path(__file__).parent
_THUMB_PX = 384
_THUMB_CACHE = 64
_MAX_FORM_BYTES = 16 * 1024
_CROP_PX = 384
# Rendered sections of the wafer map kept (a section's figure is made again only when
# what it shows changed: polling a big wafer re-renders only the section being imaged).
_FIGURE_CACHE = 4096
# Polled answers (a live page, /api/generation, /metrics) kept per URL: made at most once a
# second while the ledger changes (it commits several times a second while a wafer is
# scored), so what a change shows is at most this old and polling costs the same at
# any rate; an answer of an unchanged ledger is kept through its clock second.
_POLLED_MIN_S = 1.0
_POLLED_CACHE = 256

VERDICT_LABELS = {
    "in_focus": "in focus",
    "partly_out_of_focus": "partly out of focus",
    "out_of_focus": "out of focus",
    "empty": "empty",
    "unreadable": "unreadable",
    "pending": "not judged yet",
}


def _when(ts: float | None) -> str:
    if ts is None:
        return "–"
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(ts))


def _num(v: float | None, digits: int = 1) -> str:
    return "–" if v is None else f"{v:,.{digits}f}"


@functools.cache
def _environment() -> jinja2.Environment:
    """One per process: the templates are compiled once, not at each server start."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(_HERE / "templates"),
        autoescape=True,  # every template is HTML: names and reasons are escaped
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,  # shipped with the package: no stat of the file at each page
    )
    env.filters["when"] = _when
    env.filters["num"] = _num
    env.filters["position"] = lambda p: position_words(str(p)) if p is not None else "–"
    env.filters["printable"] = lambda s: printable(str(s)) if s is not None else ""
    env.globals["colours"] = svg.VERDICT_COLOURS
    env.globals["glyphs"] = svg.VERDICT_GLYPHS
    env.globals["ratio_colour"] = svg.ratio_colour
    env.globals["ratio_dark"] = svg.ratio_dark
    env.globals["labels"] = VERDICT_LABELS
    env.globals["verdicts"] = VERDICTS
    env.globals["version"] = focuswatch.__version__
    return env


def compile_templates() -> None:
    """Compile every template now (once a process), not when its page is first asked for."""
    env = _environment()
    for name in env.list_templates(extensions=["html"]):
        env.get_template(name)


class _Thumbnails:
    """PNG thumbnails made on demand from tiles the ledger knows, a few kept in memory."""

    def __init__(self) -> None:
        self._cache: OrderedDict[tuple[int, int, int], bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, version_id: int, path: str, size: int, mtime_ns: int) -> bytes | None:
        key = (version_id, size, mtime_ns)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        from focuswatch.alerts import make_thumbnail

        with tempfile.TemporaryDirectory(prefix="focuswatch-thumb-") as tmp:
            made = make_thumbnail(path, Path(tmp) / "t.png", px=_THUMB_PX)
            data = made.read_bytes() if made is not None else None
        if data is None:
            return None
        with self._lock:
            self._cache[key] = data
            while len(self._cache) > _THUMB_CACHE:
                self._cache.popitem(last=False)
        return data


def worst_patch_crop(path: str, patches: Any, *, px: int = _CROP_PX) -> bytes | None:
    """A PNG of the worst patch at full resolution (at most ``px`` square, from its centre).

    A σ = 2 px blur is invisible in a thumbnail of a whole 8k tile; this is what the
    policy saw. The patch grid is laid over the tile as the scorer lays it (equal
    shares, rounded). None when the tile has no focus map or cannot be read.
    """
    if not isinstance(patches, list) or not patches or not isinstance(patches[0], list):
        return None
    cells = [
        (float(v), r, c)
        for r, row in enumerate(patches)
        for c, v in enumerate(row)
        if isinstance(v, int | float) and math.isfinite(v)
    ]
    if not cells:
        return None
    _, r, c = min(cells)
    rows, cols = len(patches), len(patches[r])
    from PIL import Image

    from focuswatch.tiles import open_tile

    try:
        with open_tile(path) as tile:
            height, width = tile.shape
            y0, y1 = round(r * height / rows), round((r + 1) * height / rows)
            x0, x1 = round(c * width / cols), round((c + 1) * width / cols)
            cy, cx = (y0 + y1) // 2, (x0 + x1) // 2
            h, w = min(px, y1 - y0), min(px, x1 - x0)
            top, left = max(y0, cy - h // 2), max(x0, cx - w // 2)
            part = np.asarray(tile.read_region(top, top + h, left, left + w), dtype=np.float32)
        part = np.nan_to_num(part, nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = np.percentile(part, [0.5, 99.5])
        scaled = np.clip((part - lo) / max(float(hi - lo), 1e-6), 0.0, 1.0)
        out = io.BytesIO()
        Image.fromarray((scaled * 255).astype(np.uint8)).save(out, format="PNG")
    except Exception:  # unreadable now (TileError, OSError, a decoder's error): no crop
        return None
    return out.getvalue()


class _Figures:
    """The wafer map's section figures, each rendered once per change of what it shows."""

    def __init__(self, env: jinja2.Environment) -> None:
        self._template = env.get_template("section.html")
        self._cache: OrderedDict[tuple[Any, ...], Markup] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, section: dict[str, Any], *, rows: int, cols: int, by_score: bool) -> Markup:
        key = (section["key"], rows, cols, by_score)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        html = Markup(
            self._template.render(
                s=section, wafer={"rows": rows, "cols": cols}, cell=svg.CELL, by_score=by_score
            )
        )
        with self._lock:
            self._cache[key] = html
            while len(self._cache) > _FIGURE_CACHE:
                self._cache.popitem(last=False)
        return html


class _Polled:
    """Answers of the polled URLs, each made again only in a new clock second, or once
    the ledger changed and the kept one is ``_POLLED_MIN_S`` old (see there)."""

    def __init__(self, console: Console, clock: Callable[[], float]) -> None:
        self._console = console
        self._clock = clock
        # key -> (clock second, data version, monotonic time made, answer)
        self._kept: OrderedDict[Hashable, tuple[int, int, float, bytes]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, make: Callable[[], bytes]) -> bytes:
        second = int(self._clock())
        version = self._console.data_version()  # read before making: see Console._keep
        now = time.monotonic()
        with self._lock:
            hit = self._kept.get(key)
        fresh = hit is not None and (hit[1] == version or now - hit[2] < _POLLED_MIN_S)
        if hit is not None and fresh and hit[0] == second:
            return hit[3]
        body = make()
        with self._lock:
            self._kept[key] = (second, version, now, body)
            self._kept.move_to_end(key)
            while len(self._kept) > _POLLED_CACHE:
                self._kept.popitem(last=False)
        return body

    def forget(self) -> None:
        """After the page's own change (a dismiss): the next answer shows it at once."""
        with self._lock:
            self._kept.clear()


def _done_message(request: Request) -> str:
    """What the last change did (only these words: no text from the URL reaches the page)."""
    done = request.query_params.get("done")
    entry = request.query_params.get("entry", "")
    if done in ("dismissed", "reopened") and entry.isdigit():
        return f"{done} entry {int(entry)}"
    return ""


def _same_file(path: str, size: int, mtime_ns: int) -> bool:
    """The file at ``path`` is still the version the ledger recorded (a regular file)."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_size == size and st.st_mtime_ns == mtime_ns


def build_app(
    console: Console,
    *,
    token: str | None = None,
    clock: Callable[[], float] = time.time,
    hosts: Callable[[str | None], bool] | None = None,
) -> Starlette:
    """The console as an ASGI app over ``console`` (run it with uvicorn); ``hosts``
    says which ``Host`` headers it answers (``web.hosts``; None: every one)."""
    env = _environment()
    registry = metrics.registry_for(console)
    csrf_key = secrets.token_bytes(32)
    thumbs = _Thumbnails()
    figures = _Figures(env)
    polled = _Polled(console, clock)

    def csrf_for(session: str) -> str:
        return hmac.new(csrf_key, session.encode(), hashlib.sha256).hexdigest()

    def page(
        request: Request,
        template: str,
        status_code: int = 200,
        *,
        context: Callable[[], dict[str, Any]] | None = None,
        **fixed: Any,
    ) -> HTMLResponse:
        """``template`` rendered; with ``context`` (what it shows, made only when the
        page is made again) a polled page, kept for every session (it holds no form:
        nothing of the session's). A live page carries the ``generation`` it shows (read
        before what it shows): the script fetches it again until it is the current one."""
        session = request.cookies.get(SESSION_COOKIE, "")
        fresh = len(session) != 64 or not all(c in "0123456789abcdef" for c in session)
        if fresh:
            session = secrets.token_hex(32)

        def render(csrf: str, shown: dict[str, Any]) -> bytes:
            values = {"title": "", "generation": "", **fixed, **shown}
            return (
                env.get_template(template)
                .render(
                    request_path=request.url.path,
                    csrf=csrf,
                    writable=token is not None,
                    now_local=_when(clock()),
                    **values,
                )
                .encode()
            )

        if context is None:
            body = render(csrf_for(session), {})
        else:
            make = context
            key = ("page", request.url.path, request.url.query)
            body = polled.get(
                key, lambda: render("", {"generation": console.generation(), **make()})
            )
        response = HTMLResponse(body, status_code=status_code)
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
            "frame-ancestors 'none'; form-action 'self'"
        )
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"
        if fresh:
            response.set_cookie(SESSION_COOKIE, session, httponly=True, samesite="strict", path="/")
        return response

    def not_found(request: Request, what: str) -> HTMLResponse:
        return page(request, "error.html", 404, title="Not found", message=what)

    async def now_page(request: Request) -> Response:
        return page(
            request,
            "now.html",
            title="Now",
            live="always",
            context=lambda: {"now": console.now_view(), "endpoints": console.endpoints()},
        )

    async def wafer_page(request: Request) -> Response:
        by_score = request.query_params.get("colour") == "score"

        def shown() -> dict[str, Any]:
            wafer = console.wafer()
            return {
                "wafer": wafer,
                "figure": lambda s: figures.get(
                    s, rows=wafer["rows"], cols=wafer["cols"], by_score=by_score
                ),
            }

        return page(
            request,
            "wafer.html",
            title="Wafer map",
            by_score=by_score,
            ratio_legend=svg.ratio_legend(),
            live="changes",
            context=shown,
        )

    def tile_page(request: Request) -> Response:
        vid = int(request.path_params["vid"])
        shows = console.generation()
        view = console.tile(vid)
        if view is None:
            return not_found(request, f"The ledger knows no tile version {vid}.")
        history = console.history(view.position) if view.position is not None else []
        present = _same_file(view.path, view.size, view.mtime_ns)
        wd = view.working_distance_um
        if wd is None and present:
            from focuswatch.tiles import read_meta

            try:
                wd = read_meta(view.path).placement.working_distance_um
            except Exception:  # TileError, OSError, or a tag the reader trips on: a nicety
                wd = None
        return page(
            request,
            "tile.html",
            title=f"Tile {printable(view.tile_name)}",
            t=view,
            path=printable(view.path),
            present=present,
            working_distance_um=wd,
            patch_map=svg.patch_map(view.patch_scores),
            plot=svg.history_plot(history, current=view.id),
            history=history,
            live="changes",
            generation=shows,
        )

    def thumbnail(request: Request) -> Response:
        vid = int(request.path_params["vid"])
        view = console.tile(vid)
        if view is None or not _same_file(view.path, view.size, view.mtime_ns):
            return not_found(request, f"Tile version {vid} is not on disk any more.")
        data = thumbs.get(view.id, view.path, view.size, view.mtime_ns)
        if data is None:
            return not_found(request, f"No thumbnail can be made of tile version {vid}.")
        return Response(data, media_type="image/png", headers={"Cache-Control": "max-age=60"})

    def crop(request: Request) -> Response:
        vid = int(request.path_params["vid"])
        view = console.tile(vid)
        if view is None or not _same_file(view.path, view.size, view.mtime_ns):
            return not_found(request, f"Tile version {vid} is not on disk any more.")
        data = worst_patch_crop(view.path, view.patch_scores)
        if data is None:
            return not_found(request, f"Tile version {vid} has no focus map to crop from.")
        return Response(data, media_type="image/png", headers={"Cache-Control": "max-age=60"})

    def _filters(request: Request) -> tuple[str | None, str | None]:
        section = request.query_params.get("section") or None
        status = request.query_params.get("status") or None
        return section, status

    async def retakes_page(request: Request) -> Response:
        section, status = _filters(request)
        shows = console.generation()
        items = console.retakes(section=section, status=status)
        return page(
            request,
            "retakes.html",
            title="Retake list",
            items=items,
            histories=console.retake_histories(),
            section=section or "",
            status=status or "",
            sections=console.retake_sections(),
            statuses=("to_do", *retakes.STATUSES),
            query=request.url.query,
            message=_done_message(request),
            live="changes",
            generation=shows,
        )

    async def retakes_csv(request: Request) -> Response:
        section, status = _filters(request)
        data = retakes.render_csv(console.retakes(section=section, status=status))
        return Response(
            data,
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": 'attachment; filename="retakes.csv"'},
        )

    async def retakes_json(request: Request) -> Response:
        section, status = _filters(request)
        data = retakes.render_json(
            console.retakes(section=section, status=status),
            generated=clock(),
            events=console.retake_histories(),
        )
        return Response(
            data,
            media_type="application/json",
            headers={"Content-Disposition": 'attachment; filename="retakes.json"'},
        )

    def refuse(request: Request, code: int, why: str) -> Response:
        return page(request, "error.html", code, title="Refused", message=why)

    def same_origin(request: Request) -> bool:
        host = request.headers.get("host", "")
        origin = request.headers.get("origin")
        if origin is not None and origin != "null":
            return urlsplit(origin).netloc == host
        referer = request.headers.get("referer")
        return referer is not None and urlsplit(referer).netloc == host

    async def change_retake(request: Request) -> Response:
        if token is None:
            return refuse(request, 403, "Changes are off: set web.token in the configuration.")
        if not same_origin(request):
            return refuse(request, 403, "Refused: the request did not come from this page.")
        body = await request.body()
        if len(body) > _MAX_FORM_BYTES:
            return refuse(request, 413, "Refused: the form is too large.")
        form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
        session = request.cookies.get(SESSION_COOKIE, "")
        if not session or not hmac.compare_digest(form.get("csrf", ""), csrf_for(session)):
            return refuse(request, 403, "Refused: the page was stale; reload it and try again.")
        if not hmac.compare_digest(form.get("token", "").encode(), token.encode()):
            return refuse(request, 403, "Refused: wrong token.")
        action = str(request.path_params["action"])
        if action not in ("dismiss", "reopen"):
            return not_found(request, f"No action {action!r}.")
        entry_id = int(request.path_params["entry"])
        who = form.get("who", "").strip()[:80]
        note = form.get("note", "").strip()
        try:
            entry = console.change_retake(entry_id, action=action, note=note, who=who)
        except KeyError:
            return not_found(request, f"No retake entry {entry_id}.")
        except ValueError as exc:
            return refuse(request, 400, f"Not changed: {exc}.")
        polled.forget()
        # Back to the list as it was filtered; only the filters, never a URL from the form.
        back = parse_qs(form.get("back", ""))
        keep = {k: back[k][0] for k in ("section", "status") if back.get(k)}
        keep |= {"done": "dismissed" if action == "dismiss" else "reopened", "entry": str(entry.id)}
        location = "/retakes?" + urlencode(keep)
        return Response(status_code=303, headers={"Location": location})

    async def alerts_page(request: Request) -> Response:
        def shown() -> dict[str, Any]:
            items = console.alerts()
            return {
                "waiting": [a for a in items if a.sent is None],
                "sent": [a for a in items if a.sent is not None],
                "deliveries": console.deliveries(),
                "endpoints": console.endpoints(),
            }

        return page(request, "alerts.html", title="Alerts", live="changes", context=shown)

    async def generation(request: Request) -> Response:
        # Kept like a polled page (every commit would read the ledger's figures again):
        # one kept from before a change differs from the page made after it, so the
        # script asks again, and sees the change at the next poll past that second.
        def answer() -> bytes:
            health = console.health()
            return json.dumps(
                {"generation": console.generation(), "healthy": health.ok, "health": health.line}
            ).encode()

        return Response(
            polled.get("generation", answer),
            media_type="application/json",
            headers={"Cache-Control": "no-store"},
        )

    async def healthz(request: Request) -> Response:
        health = console.health()
        text = health.line + "\n"
        return PlainTextResponse(text, status_code=200 if health.ok else 503)

    async def metrics_page(request: Request) -> Response:
        text = polled.get("metrics", lambda: metrics.render(registry))
        return Response(text, media_type=metrics.CONTENT_TYPE)

    async def on_404(request: Request, exc: Exception) -> Response:
        if request.url.path.startswith("/static/"):
            return PlainTextResponse("not found\n", status_code=404)
        return not_found(request, f"There is no page at {printable(request.url.path)}.")

    async def on_error(request: Request, exc: Exception) -> Response:
        code = exc.status_code if isinstance(exc, HTTPException) else 500
        return PlainTextResponse(f"error {code}\n", status_code=code)

    routes = [  # the polled ones first: the router tries them in this order
        Route("/api/generation", generation),
        Route("/", now_page),
        Route("/wafer", wafer_page),
        Route("/tile/{vid:int}", tile_page),
        Route("/tile/{vid:int}/thumb.png", thumbnail),
        Route("/tile/{vid:int}/crop.png", crop),
        Route("/retakes", retakes_page),
        Route("/retakes.csv", retakes_csv),
        Route("/retakes.json", retakes_json),
        Route("/retakes/{entry:int}/{action:str}", change_retake, methods=["POST"]),
        Route("/alerts", alerts_page),
        Route("/healthz", healthz),
        Route("/metrics", metrics_page),
        Mount("/static", StaticFiles(directory=_HERE / "static"), name="static"),
    ]
    return Starlette(
        routes=routes,
        exception_handlers={404: on_404, 405: on_error, 500: on_error},
        middleware=[] if hosts is None else [Middleware(HostCheck, allowed=hosts)],
    )
