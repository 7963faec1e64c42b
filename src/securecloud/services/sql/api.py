"""The paper's interface: POST /v1/query {sql, params} → {columns, rows}, over HTTPS.

Authenticated by a client certificate from the configured CA or by the bearer
token. Each request runs in a fresh session (its statements in one implicit
transaction each); errors come back as 400 with the SQLSTATE as `reason`.
"""

from __future__ import annotations

import base64
import hmac

import anyio
from fastapi import Body, FastAPI, Header, Request
from prometheus_client import Counter

import securecloud
from securecloud.infra.api_client import ServiceError
from securecloud.infra.web import make_app, peer_certificate
from securecloud.services.sql.engine import Database
from securecloud.services.sql.errors import SqlError

QUERIES = Counter("securecloud_sql_queries_total", "Statements run through CascaDB", ["outcome"])


class QueryError(ServiceError):
    status = 400


def _json_value(value):
    if isinstance(value, bytes):
        return {"base64": base64.b64encode(value).decode()}
    return value


def create_app(database: Database, token: str | None) -> FastAPI:
    app = make_app(
        "securecloud CascaDB",
        securecloud.__version__,
        health=lambda: {"tables": len(database.tables), **database.store.stats()},
        description="SQL over the secure KVS.",
    )

    def authorised(request: Request, authorization: str) -> bool:
        if peer_certificate(request) is not None:
            return True
        given = authorization.removeprefix("Bearer ").encode()
        return token is not None and hmac.compare_digest(given, token.encode())

    @app.post("/v1/query", tags=["sql"])
    async def query(
        request: Request,
        body: dict = Body(
            examples=[{"sql": "SELECT * FROM reading WHERE client_id = $1", "params": [7]}]
        ),
        authorization: str = Header(default="", description="Bearer <token>"),
        dialect: str = "postgres",
    ) -> dict:
        if not authorised(request, authorization):
            raise ServiceError(
                "a client certificate or the bearer token is required",
                reason="unauthorised",
                status=401,
            )
        sql, params = body.get("sql"), body.get("params")
        if not isinstance(sql, str) or not sql.strip():
            raise QueryError("sql: expected the statement text", reason="42601")
        if params is not None and not isinstance(params, list | dict):
            raise QueryError("params: expected a list ($1, $2, ...) or an object", reason="22023")

        def run():
            session = database.session()
            try:
                return session.execute(sql, params, dialect)
            finally:
                session.close()

        try:
            results = await anyio.to_thread.run_sync(run)
        except SqlError as exc:
            QUERIES.labels("error").inc()
            raise QueryError(str(exc), reason=exc.sqlstate) from None
        QUERIES.labels("ok").inc()
        last = results[-1]
        return {
            "columns": last.columns,
            "rows": [[_json_value(v) for v in row] for row in last.rows],
            "command": last.tag,
        }

    return app
