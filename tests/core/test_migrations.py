"""The migrations are the schema: they match the models and run down and up again on both databases."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

import healthrelay.models
from healthrelay.core.migrate import downgrade, upgrade


def test_migrated_schema_matches_the_models(database_url: str) -> None:
    engine = create_engine(database_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}),
                                healthrelay.models.metadata)
    engine.dispose()
    assert diff == [], f"models changed without a migration: {diff}"


def test_downgrade_to_base_and_upgrade_again(database_url: str) -> None:
    downgrade(database_url, "base")
    engine = create_engine(database_url)
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    engine.dispose()
    upgrade(database_url)
    engine = create_engine(database_url)
    assert {"patients", "audit_events", "organisations", "timers"} <= set(inspect(engine).get_table_names())
    engine.dispose()
