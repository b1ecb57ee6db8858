"""Test fixtures: a real database per test (SQLite file, or PostgreSQL when
HEALTHRELAY_TEST_DATABASE_URL is set), the app, and helpers to make users and patients."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.orm import Session

ROOT = Path(__file__).resolve().parent.parent
PG_URL = os.environ.get("HEALTHRELAY_TEST_DATABASE_URL", "")


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data")
    os.environ["HEALTHRELAY_DATA_DIR"] = str(path)
    os.environ["HEALTHRELAY_FAST_PASSWORD_HASH"] = "1"
    os.environ["HEALTHRELAY_ASSETS_DIR"] = str(ROOT / "node_modules")
    os.environ.pop("HEALTHRELAY_RUN_TIMERS", None)
    return path


@pytest.fixture(scope="session")
def migrated_template(data_dir: Path) -> str:
    """Run the real migrations once; each test then starts from a copy (SQLite) or truncation (PG)."""
    from healthrelay.core.migrate import upgrade

    if PG_URL:
        engine = create_engine(PG_URL)
        with engine.begin() as conn:
            conn.execute(text("DROP SCHEMA public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
        engine.dispose()
        upgrade(PG_URL)
        _snapshot_seeded_rows(PG_URL)
        return PG_URL
    template = data_dir / "template.sqlite3"
    upgrade(f"sqlite:///{template}")
    return str(template)


# Rows the migrations seed (reference data such as referral deadlines), restored after each truncation
# so PostgreSQL tests start from the same database as SQLite tests, which copy the migrated file.
_seeded_rows: dict[str, list[dict[str, object]]] = {}


def _public_tables(conn) -> list[str]:  # noqa: ANN001
    return [r[0] for r in conn.execute(text(
        "SELECT tablename FROM pg_tables WHERE schemaname='public' AND tablename <> 'alembic_version'"))]


def _snapshot_seeded_rows(url: str) -> None:
    engine = create_engine(url)
    with engine.connect() as conn:
        for table in _public_tables(conn):
            rows = [dict(r._mapping) for r in conn.execute(text(f'SELECT * FROM "{table}"'))]
            if rows:
                _seeded_rows[table] = rows
    engine.dispose()


def _truncate_all(url: str) -> None:
    from psycopg.types.json import Json

    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {', '.join(_public_tables(conn))} RESTART IDENTITY CASCADE"))
        for table, seeded in _seeded_rows.items():
            # JSON columns come back as dicts and lists, which psycopg binds only when wrapped.
            rows = [{k: Json(v) if isinstance(v, dict | list) else v for k, v in r.items()} for r in seeded]
            columns = list(rows[0])
            conn.execute(text(f'INSERT INTO "{table}" ({", ".join(columns)}) '
                              f'VALUES ({", ".join(":" + c for c in columns)})'), rows)
    engine.dispose()


# --- the demo county, built once per run ------------------------------------------------------------------

DEMO_SEED = 2026
DEMO_RESIDENTS = 600


@dataclass(frozen=True)
class DemoSnapshot:
    url: str  # a SQLite file to copy, or a PostgreSQL database to use as a template
    lines: list[str]  # what the build printed


def _pg_admin(url: str, *statements: str) -> None:
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        for statement in statements:
            conn.execute(text(statement))
    engine.dispose()


def _pg_sibling(name: str) -> str:
    return make_url(PG_URL).set(database=name).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def demo_snapshot(migrated_template: str, data_dir: Path) -> DemoSnapshot:
    """The small demo county (600 residents) built through the real entry point, once; every test that asks for
    `built` starts from a copy of it (a file copy, or CREATE DATABASE ... TEMPLATE on PostgreSQL)."""
    from healthrelay.core.db import reset_caches
    from healthrelay.core.migrate import upgrade
    from healthrelay.demo.build import build_demo_if_missing

    if PG_URL:
        name = f"{make_url(PG_URL).database}_demo"
        _pg_admin(PG_URL, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', f'CREATE DATABASE "{name}"')
        url = _pg_sibling(name)
        upgrade(url)
    else:
        snapshot = data_dir / "demo.sqlite3"
        shutil.copyfile(migrated_template, snapshot)
        url = f"sqlite:///{snapshot}"
    os.environ["HEALTHRELAY_DATABASE_URL"] = url
    reset_caches()
    lines: list[str] = []
    try:
        assert build_demo_if_missing(seed=DEMO_SEED, residents=DEMO_RESIDENTS, progress=lines.append) is True
    finally:
        reset_caches()
    return DemoSnapshot(url=url, lines=lines)


@pytest.fixture
def built(database_url: str, demo_snapshot: DemoSnapshot) -> list[str]:
    """This test's database holds the built demo county; returns the progress lines the build printed."""
    return demo_snapshot.lines


@pytest.fixture
def database_url(request: pytest.FixtureRequest, migrated_template: str, tmp_path: Path) -> Iterator[str]:
    from healthrelay.core.db import reset_caches

    demo: DemoSnapshot | None = request.getfixturevalue("demo_snapshot") if "built" in request.fixturenames else None
    scratch = ""
    if PG_URL and demo is not None:
        scratch = f"{make_url(PG_URL).database}_demo_test"
        _pg_admin(PG_URL, f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)',
                  f'CREATE DATABASE "{scratch}" TEMPLATE "{make_url(demo.url).database}"')
        url = _pg_sibling(scratch)
    elif PG_URL:
        _truncate_all(PG_URL)
        url = PG_URL
    else:
        copy = tmp_path / "test.sqlite3"
        shutil.copyfile(demo.url.removeprefix("sqlite:///") if demo else migrated_template, copy)
        url = f"sqlite:///{copy}"
    os.environ["HEALTHRELAY_DATABASE_URL"] = url
    reset_caches()
    yield url
    reset_caches()
    if scratch:
        _pg_admin(PG_URL, f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)')


@pytest.fixture
def db(database_url: str) -> Iterator[Session]:
    from healthrelay.core.db import get_sessionmaker

    session = get_sessionmaker()()
    yield session
    session.rollback()
    session.close()


@pytest.fixture
def app(database_url: str):  # noqa: ANN201
    import healthrelay.models  # noqa: F401
    from healthrelay.app import create_app

    return create_app()


@pytest.fixture
def client(app):  # noqa: ANN001, ANN201
    from fastapi.testclient import TestClient

    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def live_server(app) -> Iterator[str]:  # noqa: ANN001
    """The real app served by uvicorn on loopback, for browser tests."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("test server did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


# --- browser tests: Playwright driving Debian's Chromium (never a downloaded browser) ---------------

CHROMIUM = os.environ.get("HEALTHRELAY_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: scripts/setup.sh --test installs Debian's chromium")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, live_server: str, tmp_path: Path) -> Iterator[object]:  # noqa: ANN001
    context = browser.new_context(base_url=live_server, viewport={"width": 1366, "height": 768},
                                  locale="zh-CN")
    context.set_default_timeout(15_000)
    page = context.new_page()
    yield page
    context.close()
