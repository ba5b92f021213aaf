"""``shelver review``: the review console (Starlette + Jinja2, rendered on the server, htmx from static/).

Pages: ``/`` the queue (one product at a time; every control is a button with a key), ``/dashboard``
(review lag, decisions per hour, the model's share right per category, corrections per reviewer, the
running ``taxonomy_version`` and how far the projections moved; SVG drawn on the server), ``/taxonomy``
(read-only). Every page and form post needs an authenticated reviewer (401 otherwise, and nothing is
published); posts need the CSRF token; the reviewer of a correction is the authenticated one, whatever
the form says. ``/healthz`` and ``/static`` are open.
"""
from __future__ import annotations

import time
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from consumer.config import Settings
from consumer.review.auth import Authenticator, Csrf
from consumer.review.charts import bar_chart, column_chart
from consumer.review.queue import DecisionError, ReviewQueue
from consumer.review.stats import Tally

HERE = Path(__file__).resolve().parent
KEYS = list("1234567890qwertyuiop")  # category shortcuts, in taxonomy order; a = accept, s = skip
SECURITY_HEADERS = {
    # Product images come from the marketplace's own hosts (any http/https URL); nothing else leaves the page.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' http: https: data:; script-src 'self'; "
                               "style-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def create_app(settings: Settings, queue: ReviewQueue, tally: Tally, authenticator: Authenticator,
               csrf: Csrf | None = None) -> Starlette:
    csrf = csrf or Csrf(public_origin=settings.review_public_origin)
    templates = Jinja2Templates(directory=str(HERE / "templates"))

    def reviewer_of(request: Request) -> str:
        name = authenticator.identify(request.headers)
        if name is None:
            raise HTTPException(401, "authentication required",
                                headers={"WWW-Authenticate": 'Basic realm="shelver review", charset="UTF-8"'})
        return name

    def categories() -> list[tuple[str, str]]:
        taxonomy, _ = tally.taxonomy()
        return list(zip(taxonomy.targets, KEYS + [""] * len(taxonomy.targets)))

    def render(request: Request, name: str, reviewer: str, status: int = 200, **context) -> Response:
        context.update(reviewer=reviewer, csrf=csrf.token(reviewer), page=name.split(".")[0])
        response = templates.TemplateResponse(request, name, context, status_code=status)
        response.headers.update(SECURITY_HEADERS)
        return response

    def item_context(reviewer: str, message: str | None = None) -> dict:
        item = queue.next_for(reviewer)
        return {"item": item, "categories": categories(), "message": message, "queue": queue.snapshot(),
                "rendered_at": f"{time.time():.3f}"}

    def index(request: Request) -> Response:
        reviewer = reviewer_of(request)
        return render(request, "queue.html", reviewer, **item_context(reviewer))

    def item(request: Request) -> Response:
        reviewer = reviewer_of(request)
        return render(request, "_item.html", reviewer, **item_context(reviewer))

    async def posted(request: Request) -> tuple[str, dict]:
        # before the body is read: an unauthenticated post publishes nothing (scrypt runs off the event loop)
        reviewer = await run_in_threadpool(reviewer_of, request)
        form = await request.form()
        token = form.get("csrf") or request.headers.get("x-csrf-token")
        if not csrf.check(reviewer, token, request.headers.get("origin"), request.headers.get("host")):
            raise HTTPException(403, "missing or wrong CSRF token")
        return reviewer, dict(form)  # a "reviewer" field in the form is never read

    def answer(request: Request, reviewer: str, message: str | None = None, status: int = 200) -> Response:
        if request.headers.get("hx-request"):
            return render(request, "_item.html", reviewer, status=status, **item_context(reviewer, message))
        if status != 200:
            return render(request, "queue.html", reviewer, status=status, **item_context(reviewer, message))
        return RedirectResponse("/", status_code=303)

    async def decide(request: Request) -> Response:
        reviewer, form = await posted(request)
        choice = str(form.get("category") or "") or None  # empty: accept the model's category
        known = tuple(c for c, _ in categories())
        try:  # the delivery report is awaited in a worker thread, not on the event loop
            await run_in_threadpool(queue.decide, reviewer, request.path_params["item_id"], choice, known)
        except DecisionError as exc:
            return answer(request, reviewer, str(exc), exc.status)
        return answer(request, reviewer)

    async def skip(request: Request) -> Response:
        reviewer, _ = await posted(request)
        try:
            queue.skip(reviewer, request.path_params["item_id"])
        except DecisionError as exc:
            return answer(request, reviewer, str(exc), exc.status)
        return answer(request, reviewer)

    def dashboard(request: Request) -> Response:
        reviewer = reviewer_of(request)
        s = tally.summary()
        accuracy = [(c, share) for c, (share, _) in s["accuracy"].items()]
        lag = s["lag"]
        charts = {  # SVG built by consumer.review.charts, which escapes every label: |safe in the template
            "lag": (bar_chart([(f"partition {p}", n) for p, n in sorted((lag or {}).get("partitions", {}).items())],
                                    title="items waiting per partition")),
            "hourly": (column_chart(s["hourly"], title="decisions per hour, last 24 hours")),
            "accuracy": (bar_chart(accuracy, title="share the model had right, per category of the model",
                                         fmt="{:.0%}", max_value=1.0)),
            "reviewers": (bar_chart(s["per_reviewer"], title="corrections per reviewer")),
            "drift": (bar_chart(s["drift"], title="projection moved since the artifact (total variation)",
                                      fmt="{:.3f}", max_value=1.0)),
        }
        return render(request, "dashboard.html", reviewer, s=s, charts=charts, counts=s["accuracy"],
                      artifact=tally.artifact.model_version)

    def taxonomy_page(request: Request) -> Response:
        reviewer = reviewer_of(request)
        taxonomy, source = tally.taxonomy()
        return render(request, "taxonomy.html", reviewer, taxonomy=taxonomy, source=source)

    def healthz(request: Request) -> Response:
        ok = queue.snapshot()["running"]
        return PlainTextResponse("ok" if ok else "review queue stopped", status_code=200 if ok else 503)

    routes = [
        Route("/", index), Route("/item", item), Route("/dashboard", dashboard), Route("/taxonomy", taxonomy_page),
        Route("/items/{item_id}/decide", decide, methods=["POST"]),
        Route("/items/{item_id}/skip", skip, methods=["POST"]),
        Route("/healthz", healthz),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    return Starlette(routes=routes)


def build(settings: Settings) -> tuple[Starlette, ReviewQueue, Tally]:
    """The app with its queue and tally started (the caller closes them)."""
    from consumer.review.auth import read_password_file
    from consumer.review.stats import Artifact

    if settings.review_trusted_header:
        authenticator = Authenticator({}, trusted_header=settings.review_trusted_header)
    else:
        authenticator = Authenticator(read_password_file(settings.review_password_file))
    tally = Tally(settings, Artifact(settings.resolved_artifact_dir()))
    queue = ReviewQueue(settings).start()
    tally.start()
    return create_app(settings, queue, tally, authenticator), queue, tally


def serve(settings: Settings) -> int:
    """Runs until SIGTERM/SIGINT; then the queue commits every position and its consumer leaves the group."""
    import contextlib
    import signal

    import uvicorn

    class Server(uvicorn.Server):
        # uvicorn re-raises the signal after its graceful shutdown, which would end the process before the
        # queue's last commit below; here the signal only ends serving.
        @contextlib.contextmanager
        def capture_signals(self):
            previous = {sig: signal.signal(sig, lambda *_: setattr(self, "should_exit", True))
                        for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    app, queue, tally = build(settings)
    try:
        server = Server(uvicorn.Config(app, host=settings.review_host, port=settings.review_port,
                                       log_level="warning", access_log=False))
        server.run()
    finally:
        tally.stop()
        queue.close()
    return 0


__all__ = ["KEYS", "build", "create_app", "serve"]
