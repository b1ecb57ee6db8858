"""The `healthrelay` command."""

from __future__ import annotations

import json
import os
import socket
import sys

import typer

app = typer.Typer(help="HealthRelay 健康接力: county medical community platform", no_args_is_help=True,
                  add_completion=False)
audit_app = typer.Typer(help="Audit trail tools", no_args_is_help=True)
app.add_typer(audit_app, name="audit")


def _serve(host: str | None, port: int | None, *, run_timers: bool = True, run_dicom: bool = True,
           run_hl7: bool = True) -> None:
    import uvicorn

    from healthrelay.core.config import get_settings

    settings = get_settings()
    if run_timers:
        os.environ["HEALTHRELAY_RUN_TIMERS"] = "1"
    if run_dicom:
        os.environ["HEALTHRELAY_RUN_DICOM"] = "1"
    if run_hl7:
        os.environ["HEALTHRELAY_RUN_HL7"] = "1"
    uvicorn.run("healthrelay.asgi:app", host=host or settings.host, port=port or settings.port,
                log_level="info", proxy_headers=False)


@app.command()
def migrate() -> None:
    """Bring the database schema up to date (Alembic upgrade head)."""
    from healthrelay.core.config import get_settings
    from healthrelay.core.migrate import upgrade

    upgrade(get_settings().database_url)
    typer.echo("database is up to date")


@app.command()
def serve(host: str = typer.Option(None, help="defaults to HEALTHRELAY_HOST"),
          port: int = typer.Option(None, help="defaults to HEALTHRELAY_PORT"),
          timers: bool = typer.Option(True, help="also run timers in this process (embedded setup)"),
          dicom: bool = typer.Option(True, help="also run the DICOM receiver in this process (embedded setup)"),
          hl7: bool = typer.Option(True, help="also run the HL7 MLLP listener in this process (embedded setup)"),
          ) -> None:
    """Serve the web application (migrating the database first)."""
    migrate()
    _serve(host, port, run_timers=timers, run_dicom=dicom, run_hl7=hl7)


@app.command()
def dicom(host: str = typer.Option(None, help="defaults to HEALTHRELAY_DICOM_HOST"),
          port: int = typer.Option(None, help="defaults to HEALTHRELAY_DICOM_PORT (11112)")) -> None:
    """Run the DICOM receiver alone (scale-out setup, beside `serve --no-dicom`)."""
    import healthrelay.models  # noqa: F401
    from healthrelay.core.config import get_settings
    from healthrelay.core.db import get_sessionmaker
    from healthrelay.imaging.scp import start_receiver

    settings = get_settings()
    receiver = start_receiver(get_sessionmaker(), host=host or settings.dicom_host,
                              port=port or settings.dicom_port, ae_title=settings.dicom_ae_title)
    typer.echo(f"DICOM receiver {settings.dicom_ae_title} listening on {host or settings.dicom_host}:"
               f"{port or settings.dicom_port}")
    try:
        receiver.wait()
    except KeyboardInterrupt:
        pass
    finally:
        receiver.shutdown()


@app.command("hl7")
def hl7_listener(host: str = typer.Option(None, help="defaults to HEALTHRELAY_HL7_HOST"),
                 port: int = typer.Option(None, help="defaults to HEALTHRELAY_HL7_PORT (2575)")) -> None:
    """Run the HL7 v2 MLLP listener alone (scale-out setup, beside `serve --no-hl7`)."""
    import logging

    import healthrelay.models  # noqa: F401
    from healthrelay.core.config import get_settings
    from healthrelay.core.db import get_sessionmaker
    from healthrelay.hl7.listener import start_listener

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = get_settings()
    listener = start_listener(get_sessionmaker(), host=host or settings.hl7_host, port=port or settings.hl7_port)
    typer.echo(f"HL7 MLLP listener on {host or settings.hl7_host}:{listener.port}")
    try:
        listener.wait()
    except KeyboardInterrupt:
        pass
    finally:
        listener.shutdown()


@app.command()
def worker(interval: float = typer.Option(1.0, help="seconds between polls"),
           max_loops: int = typer.Option(0, help="stop after this many polls (0 = run forever)")) -> None:
    """Run timers and jobs in this process (scale-out setup, beside `serve --no-timers`)."""
    import healthrelay.models  # noqa: F401 - registers every domain's timer handlers
    from healthrelay.core import timers
    from healthrelay.core.db import get_sessionmaker

    runner = f"worker:{socket.gethostname()}:{os.getpid()}"
    typer.echo(f"{runner} running timers every {interval}s")
    timers.run_forever(get_sessionmaker(), runner=runner, interval=interval, max_loops=max_loops or None)


@app.command()
def demo(seed: int = typer.Option(2026, help="same seed, same county"),
         residents: int = typer.Option(20000, help="number of residents"),
         serve_after: bool = typer.Option(True, "--serve/--no-serve", help="serve the app afterwards"),
         host: str = typer.Option(None), port: int = typer.Option(None)) -> None:
    """Create the demo county (once) in the configured database, then serve the app."""
    from healthrelay.core.config import get_settings
    from healthrelay.demo.build import build_demo_if_missing

    migrate()
    build_demo_if_missing(seed=seed, residents=residents, progress=typer.echo)
    settings = get_settings()
    url = f"http://{host or settings.host}:{port or settings.port}/"
    typer.echo(f"\n演示县已就绪 / demo county ready: {url}")
    typer.echo("演示账号 / demo logins: `healthrelay demo-accounts` (JSON: --json); all share the "
               "password shown there")
    if serve_after:
        _serve(host, port)


@app.command("demo-accounts")
def demo_accounts(as_json: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """List the demo logins (and, as later parts arrive, the demo's DICOM and HL7 peers)."""
    from healthrelay.demo.build import demo_accounts_document

    document = demo_accounts_document()
    if as_json:
        sys.stdout.write(json.dumps(document, ensure_ascii=False, indent=2) + "\n")
        return
    for account in document["accounts"]:
        typer.echo(f"{account['username']:<24} {account['password']:<16} {account['role']:<15} "
                   f"{account['organisation'] or ''}")


@audit_app.command("verify")
def audit_verify() -> None:
    """Recompute the audit hash chain; exit 1 if any row was edited, removed or reordered."""
    from healthrelay.audit.service import verify_chain
    from healthrelay.core.db import get_sessionmaker

    with get_sessionmaker()() as db:
        checked, breaks = verify_chain(db)
    if breaks:
        for b in breaks[:50]:
            typer.echo(f"BROKEN at audit event {b.event_id}: {b.problem}", err=True)
        typer.echo(f"audit chain BROKEN: {len(breaks)} problem(s) in {checked} events", err=True)
        raise typer.Exit(1)
    typer.echo(f"audit chain intact: {checked} events verified")


if __name__ == "__main__":
    app()
