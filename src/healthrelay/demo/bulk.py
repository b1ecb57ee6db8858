"""Bulk writes for the demo stages that build inside the caller's session (chronic, outreach)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, insert
from sqlalchemy.orm import Session

CHUNK = 5000


def insert_rows(db: Session, model: type[Any], rows: list[dict[str, Any]]) -> None:
    """Bulk insert inside our transaction: COPY on PostgreSQL (psycopg's executemany and multi-row INSERTs spend
    most of their time on parameters), as the demo build does; Core executemany in chunks on SQLite."""
    if not rows:
        return
    table = model.__table__
    connection = db.connection()
    if connection.dialect.name != "postgresql":
        for start in range(0, len(rows), CHUNK):
            connection.execute(insert(table), rows[start:start + CHUNK])
        return
    from psycopg.types.json import Jsonb

    db.flush()
    columns = list(rows[0])
    is_json = [isinstance(table.c[c].type, JSON) for c in columns]
    raw = connection.connection.driver_connection
    names = ", ".join(columns)  # column names come from our own models, never from input
    with raw.cursor() as cursor, cursor.copy(f"COPY {table.name} ({names}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row([Jsonb(row[c]) if js else row[c] for c, js in zip(columns, is_json, strict=True)])
