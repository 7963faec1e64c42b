"""The `securecloud` command."""

import typer

from securecloud.cli import (
    batch,
    billing,
    cas,
    fraud,
    ingest,
    kvs,
    las,
    meters,
    platform,
    portal,
    runtime,
    sql,
)
from securecloud.cli.demo import demo

app = typer.Typer(
    help="securecloud: confidential processing of smart-metering data on untrusted clouds. "
    "Runs in simulation mode on machines without a TEE (no hardware isolation).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(las.app, name="las")
app.add_typer(cas.app, name="cas")
app.add_typer(runtime.app, name="runtime")
app.add_typer(batch.app, name="batch")
app.add_typer(kvs.app, name="kvs")
app.add_typer(meters.app, name="meters")
app.add_typer(ingest.app, name="ingest")
app.add_typer(billing.app, name="billing")
app.add_typer(fraud.app, name="fraud")
app.add_typer(portal.app, name="portal")
app.add_typer(sql.app, name="sql")
app.command()(demo)
app.command()(platform.up)
app.command()(platform.status)
app.command()(platform.down)

if __name__ == "__main__":
    app()
