"""The SQL tool against a real SQLite file: tenant walls whatever the model writes, read-only,
time and size limits, clear refusals."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from relaybus.agents.errors import DataRefused
from relaybus.agents.tools.config import SqlSource, Table
from relaybus.agents.tools.demo import build_pricing_db
from relaybus.agents.tools.sql import SqlDatabase
from relaybus.bus import ConfigError

COLUMNS = ["competitor", "product", "plan", "price_usd", "updated"]


@pytest.fixture
def db(tmp_path: Path) -> Iterator[SqlDatabase]:
    path = build_pricing_db(tmp_path / "pricing.db")
    source = SqlSource(
        url=f"sqlite:///{path}",
        tables={"competitor_prices": Table(columns=COLUMNS, tenant_column="tenant")},
        free_form=True,
        max_rows=50,
        timeout_s=0.5,
    )
    database = SqlDatabase("pricing", source)
    yield database
    database.close()


def competitors(result: dict) -> set[str]:
    return {row[result["columns"].index("competitor")] for row in result["rows"]}


def test_plain_select_sees_only_the_callers_rows(db: SqlDatabase) -> None:
    alice = db.run("SELECT * FROM competitor_prices", "alice")
    assert alice["columns"] == COLUMNS  # the tenant and internal columns are not exposed
    assert competitors(alice) == {"acme", "globex", "initech"} and len(alice["rows"]) == 5
    assert competitors(db.run("SELECT * FROM competitor_prices", "bob")) == {"hooli", "acme"}


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT competitor FROM competitor_prices UNION SELECT competitor FROM competitor_prices",
        "SELECT competitor FROM competitor_prices WHERE 1=1 OR tenant = 'bob'",
        "SELECT competitor FROM competitor_prices WHERE competitor IN "
        "(SELECT competitor FROM competitor_prices)",
        "WITH x AS (SELECT * FROM competitor_prices) SELECT competitor FROM x",
        "SELECT competitor FROM \"competitor_prices\" -- WHERE tenant = 'bob'",
        "SELECT competitor FROM COMPETITOR_PRICES /* tenant */ AS c",
        "SELECT a.competitor FROM competitor_prices a JOIN competitor_prices b ON 1=1",
        "SELECT competitor FROM (SELECT * FROM competitor_prices) AS sub",
    ],
)
def test_no_query_shape_reaches_another_tenants_rows(db: SqlDatabase, sql: str) -> None:
    try:
        result = db.run(sql, "alice")
    except DataRefused as exc:  # refusing is as good as scoping
        assert "tenant" in str(exc) or "no such column" in str(exc)
        return
    assert competitors(result) <= {"acme", "globex", "initech"}
    assert "hooli" not in str(result)


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        ("SELECT * FROM competitor_prices; DELETE FROM competitor_prices", "one statement only"),
        ("DELETE FROM competitor_prices", "only SELECT"),
        ("UPDATE competitor_prices SET price_usd = 0", "only SELECT"),
        ("DROP TABLE competitor_prices", "only SELECT"),
        ("CREATE TABLE t (x INT)", "only SELECT"),
        ("PRAGMA table_info(competitor_prices)", "only SELECT"),
        ("ATTACH DATABASE '/tmp/x.db' AS other", "only SELECT"),
        ("SELECT * FROM api_keys", "table 'api_keys' is not exposed"),
        ("SELECT * FROM main.competitor_prices", "schema-qualified"),
        ("SELECT * FROM sqlite_master", "not exposed"),
        (
            "SELECT * FROM pragma_table_info('competitor_prices')",
            "pragma_table_info() is not allowed",
        ),
        ("SELECT load_extension('/tmp/evil')", "load_extension() is not allowed"),
        ("SELECT * FROM competitor_prices WHERE product = ?", "parameters are not allowed"),
        ("SELECT internal_note FROM competitor_prices", "no such column: internal_note"),
        ("SELECT tenant FROM competitor_prices", "no such column: tenant"),
        (
            "WITH competitor_prices AS (SELECT * FROM api_keys) SELECT * FROM competitor_prices",
            "CTE",
        ),
        ("SELEC * FRM competitor_prices", "only SELECT"),
        ("SELECT * FROM (competitor_prices", "does not parse"),
        ("SELECT * FROM competitor_prices WHERE product = :product", "parameters are not allowed"),
        (
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT i FROM n",
            "recursive CTEs",
        ),
    ],
)
def test_unsafe_or_wrong_sql_is_refused_with_the_reason(
    db: SqlDatabase, sql: str, reason: str
) -> None:
    with pytest.raises(DataRefused, match=reason.replace("(", r"\(").replace(")", r"\)")):
        db.run(sql, "alice")


def test_the_database_file_is_unchanged_by_anything_the_model_tries(
    db: SqlDatabase, tmp_path: Path
) -> None:
    for sql in ("DELETE FROM competitor_prices", "SELECT 1; DROP TABLE api_keys"):
        with pytest.raises(DataRefused):
            db.run(sql, "alice")
    with sqlite3.connect(tmp_path / "pricing.db") as conn:
        assert conn.execute("SELECT count(*) FROM competitor_prices").fetchone() == (8,)
        assert conn.execute("SELECT count(*) FROM api_keys").fetchone() == (1,)


def test_a_declared_querys_parameters_are_filled_and_checked(db: SqlDatabase) -> None:
    sql = "SELECT plan, price_usd FROM competitor_prices WHERE product = :product ORDER BY plan"
    result = db.run(sql, "bob", {"product": "widgetpro"})
    assert result["rows"] == [["team", 45.0]]
    # an injection attempt through a parameter is just a string that matches nothing
    assert db.run(sql, "alice", {"product": "x' OR '1'='1"})["rows"] == []
    with pytest.raises(DataRefused, match="uses :product but no value"):
        db.run(sql, "alice", {})
    with pytest.raises(DataRefused, match="'extra' is not used"):
        db.run(sql, "alice", {"product": "a", "extra": 1})
    with pytest.raises(DataRefused, match="parameters are not allowed in free-form SQL"):
        db.run(sql, "alice")  # no params: model-written SQL, which may not use any


def test_a_slow_query_is_cut_off(db: SqlDatabase) -> None:
    slow = "SELECT count(*) FROM " + ", ".join(f"competitor_prices t{i}" for i in range(14))
    with pytest.raises(DataRefused, match=r"ran over 0.5s and was cut off"):
        db.run(slow, "alice")
    assert db.run("SELECT count(*) AS n FROM competitor_prices", "alice")["rows"] == [[5]]


def test_an_oversize_result_is_truncated_with_a_note(db: SqlDatabase) -> None:
    many = "SELECT a.competitor, b.plan, c.product FROM competitor_prices a, competitor_prices b, "
    many += "competitor_prices c"
    result = db.run(many, "alice")
    assert len(result["rows"]) == 50 and result["truncated"]
    assert result["note"] == "result cut at 50 rows (row limit of 50); narrow the query"


def test_a_table_without_tenant_column_must_be_declared_shared(tmp_path: Path) -> None:
    path = build_pricing_db(tmp_path / "p.db")
    with pytest.raises(ConfigError, match=r"set tenant_column .* or shared = true"):
        SqlDatabase(
            "p", SqlSource(url=f"sqlite:///{path}", tables={"api_keys": Table(columns=["name"])})
        )
    with pytest.raises(ConfigError, match="no SQLite file"):
        SqlDatabase(
            "p",
            SqlSource(
                url=f"sqlite:///{tmp_path}/missing.db",
                tables={"t": Table(columns=["a"], shared=True)},
            ),
        )
