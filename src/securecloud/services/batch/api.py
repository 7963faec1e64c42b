"""The manager's REST API (OpenAPI at /openapi.json).

Every call under /submissions needs `Authorization: Bearer <token>`; the token
is in <data dir>/batch/api-token. Credentials never travel in a body.
"""

from __future__ import annotations

import hmac
from contextlib import asynccontextmanager

from fastapi import Body, Depends, FastAPI, Header, Path
from fastapi.responses import Response

import securecloud
from securecloud.infra.web import make_app
from securecloud.services.batch.errors import Unauthorized
from securecloud.services.batch.manager import Manager
from securecloud.services.batch.report import summarize
from securecloud.services.batch.runner import Run

RunId = Path(pattern=r"^[0-9a-f]{12}$", description="submission id")


def _status(run: Run) -> dict:
    last = run.samples[-1].to_json() if run.samples else None
    sub = run.submission
    return {
        "id": run.id,
        "status": run.status,
        "created": run.created,
        "error": run.error,
        "plugin": sub.plugin,
        "strategy": sub.control.schedule_strategy,
        "expected_time": sub.expected_time,
        "last_sample": last,
    }


def _report(run: Run) -> dict:
    if run.report is not None and run.status != "running":
        return {"id": run.id, "status": run.status, **run.report}
    live = summarize(
        run.samples,
        run.submission.expected_time,
        run.finished_at,
        run.worker_seconds,
        run.tolerance,
    )
    return {"id": run.id, "status": run.status, **live}


def create_app(manager: Manager) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app):
        manager.resume()
        yield
        manager.shutdown()

    app = make_app(
        "securecloud batch manager (Asperathos)",
        securecloud.__version__,
        health=lambda: {"submissions": len(manager.runs)},
        description="Deadline-aware batch jobs on attested workers.",
        lifespan=lifespan,
    )

    def authorized(authorization: str = Header(default="", description="Bearer <token>")) -> None:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token, manager.token):
            raise Unauthorized("missing or wrong API token (Authorization: Bearer <token>)")

    guard = [Depends(authorized)]

    @app.post("/submissions", status_code=202, dependencies=guard, tags=["submissions"])
    def submit(document: dict = Body(description="an Asperathos submission")) -> dict:
        return _status(manager.submit(document))

    @app.get("/submissions", dependencies=guard, tags=["submissions"])
    def list_submissions() -> list[dict]:
        return [_status(r) for r in sorted(manager.runs.values(), key=lambda r: r.created)]

    @app.get("/submissions/{run_id}", dependencies=guard, tags=["submissions"])
    def status(run_id: str = RunId) -> dict:
        return _status(manager.get(run_id))

    @app.get("/submissions/{run_id}/report", dependencies=guard, tags=["submissions"])
    def report(run_id: str = RunId) -> dict:
        return _report(manager.get(run_id))

    @app.get(
        "/submissions/{run_id}/report.png",
        dependencies=guard,
        tags=["submissions"],
        response_class=Response,
    )
    def report_png(run_id: str = RunId) -> Response:
        return Response(manager.report_png(run_id), media_type="image/png")

    @app.get("/submissions/{run_id}/log", dependencies=guard, tags=["submissions"])
    def submission_log(run_id: str = RunId) -> dict:
        return {"id": run_id, "lines": list(manager.get(run_id).log)}

    @app.put("/submissions/{run_id}/stop", dependencies=guard, tags=["submissions"])
    def stop(run_id: str = RunId) -> dict:
        return _status(manager.stop(run_id))

    return app
