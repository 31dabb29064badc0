"""Adversarial tests of the data tools' trust boundaries, against real servers: a SQLite file with
two tenants' rows and an HTTP server on loopback that records every path it is asked for. Each
attack must be refused with the tool's own error, or come back without a single row of the other
tenant or a request to an endpoint that was not declared. (The mail tool's header injection tests,
through a real aiosmtpd server, are in tests/tools/test_email.py.)"""

from __future__ import annotations

import json
import math
import posixpath
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relaybus.agents import ToolArgumentsInvalid
from relaybus.agents.errors import DataRefused
from relaybus.agents.tools import http as http_tool
from relaybus.agents.tools.config import ApiSource, Endpoint, SqlSource, Table
from relaybus.agents.tools.http import ApiClient
from relaybus.agents.tools.sql import SqlDatabase, sql_tools

from ..conftest import ROOT

# -- SQL: two tenants in one SQLite file ------------------------------------------------------------

BOB = "BOB-ONLY"  # in every text cell of bob's rows: it must never come back to alice


def build_two_tenants(path: Path) -> Path:
    with sqlite3.connect(path) as conn:
        conn.executescript("""
            CREATE TABLE customers (tenant TEXT, id INTEGER, name TEXT, note TEXT);
            CREATE TABLE orders (tenant TEXT, id INTEGER, customer_id INTEGER, total REAL);
            CREATE TABLE vip (tenant TEXT, customer_id INTEGER);
            CREATE TABLE api_keys (name TEXT, secret TEXT);
            INSERT INTO api_keys VALUES ('billing', 'sk-live-do-not-leak');
        """)
        for tenant, base in (("alice", 1), ("bob", 101)):
            tag = "alice" if tenant == "alice" else BOB
            for i in range(3):
                conn.execute(
                    "INSERT INTO customers VALUES (?, ?, ?, ?)",
                    (tenant, base + i, f"{tag}-customer-{i}", f"{tag}-note"),
                )
                conn.execute(
                    "INSERT INTO orders VALUES (?, ?, ?, ?)", (tenant, base + i, base + i, 10.0 * i)
                )
            conn.execute("INSERT INTO vip VALUES (?, ?)", (tenant, base))
    conn.close()
    return path


def two_tenant_db(tmp_path: Path, timeout_s: float = 1.0) -> SqlDatabase:
    path = build_two_tenants(tmp_path / "tenants.db")
    tables = {
        "customers": Table(columns=["id", "name"], tenant_column="tenant"),
        "orders": Table(columns=["id", "customer_id", "total"], tenant_column="tenant"),
        "vip": Table(columns=["customer_id"], tenant_column="tenant"),
    }
    source = SqlSource(url=f"sqlite:///{path}", tables=tables, free_form=True, timeout_s=timeout_s)
    return SqlDatabase("crm", source)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[SqlDatabase]:
    database = two_tenant_db(tmp_path)
    yield database
    database.close()


def leaks(result: dict[str, Any]) -> bool:
    text = json.dumps(result["rows"])
    ids = {c for row in result["rows"] for c in row if isinstance(c, int) and 101 <= c <= 103}
    return BOB in text or "sk-live" in text or "note" in text or bool(ids)


HOSTILE_SQL = [
    # the review's attack: a quoted :name (a bind for SQLAlchemy's text(), not for SQLite) and
    # an @name (a slot for SQLite, not for SQLAlchemy) shifted the tenant's positional bind
    "SELECT name FROM customers WHERE name = ':relaybus_tenant' OR id = @x",
    "SELECT name FROM customers WHERE name <> ':x' AND name <> '?' OR id = @relaybus_tenant",
    "SELECT name FROM customers WHERE name = ':relaybus_tenant'",
    "SELECT name FROM customers WHERE id = ?",
    "SELECT name FROM customers WHERE id = ?1",
    "SELECT name FROM customers WHERE id = :x",
    "SELECT name FROM customers WHERE id = $x",
    "SELECT name FROM customers WHERE id = ${x}",
    "SELECT name FROM customers WHERE id = %s",
    "SELECT name FROM customers WHERE id = %(x)s",
    "SELECT name FROM customers WHERE id = #x",
    "SELECT name FROM customers WHERE id = @@x",
    # x IN table: SQLite reads the whole table unless it is rewritten like any other reference
    "SELECT 'hit' AS h WHERE 101 IN vip",
    "SELECT name FROM customers WHERE id IN vip OR id NOT IN vip",
    "SELECT 'hit' AS h WHERE 101 IN main.vip",
    "SELECT 'hit' AS h WHERE 101 IN temp.vip",
    "SELECT 'hit' AS h WHERE 101 IN (vip)",
    # nested subqueries, joins, set operations
    "SELECT name FROM customers WHERE id IN (SELECT customer_id FROM orders WHERE total >= "
    "(SELECT min(total) FROM orders WHERE id IN (SELECT customer_id FROM vip)))",
    "SELECT a.name, b.name FROM customers a JOIN customers b ON a.id <> b.id",
    "SELECT name FROM customers NATURAL JOIN orders",
    "SELECT name FROM customers UNION SELECT name FROM customers WHERE tenant = 'bob'",
    "SELECT name FROM customers UNION ALL SELECT secret FROM api_keys",
    "SELECT id FROM customers INTERSECT SELECT customer_id FROM orders",
    "SELECT id FROM orders EXCEPT SELECT 0",
    "SELECT (SELECT group_concat(name) FROM customers) AS all_names",
    "SELECT name FROM customers WHERE EXISTS (SELECT 1 FROM customers c2 WHERE c2.id > 100)",
    # CTEs: shadowing a table, out of scope, recursive
    "WITH customers AS (SELECT * FROM main.customers) SELECT name FROM customers",
    "WITH vip AS (SELECT 101 AS customer_id) SELECT name FROM customers WHERE id IN vip",
    "WITH c AS (SELECT * FROM customers) SELECT name FROM c",
    "SELECT * FROM (WITH api_keys AS (SELECT 1 AS x) SELECT x FROM api_keys) AS s, api_keys",
    "WITH x AS (SELECT name FROM customers) SELECT name FROM x UNION SELECT name FROM customers",
    # names and quoting
    "SELECT name FROM main.customers",
    "SELECT name FROM temp.customers",
    "SELECT name FROM [main].[customers]",
    "SELECT name FROM `customers` WHERE `tenant` = 'bob'",
    'SELECT "tenant", "note" FROM customers',
    "SELECT tenant FROM customers",
    "SELECT * FROM sqlite_temp_master",
    "SELECT * FROM pragma_table_info('customers')",
    # comments and quotes
    "SELECT name FROM customers -- ' UNION SELECT name FROM main.customers",
    "SELECT name FROM customers /* ' */ WHERE 1 = 1 /* ' */ OR tenant = 'bob'",
    "SELECT name FROM customers WHERE name = '--' OR 1 = 1",
    "SELECT name FROM customers WHERE name = '/*' OR 1 = 1 --*/",
    "SELECT name FROM customers; SELECT name FROM main.customers",
]


@pytest.mark.parametrize("sql", HOSTILE_SQL)
def test_no_sql_the_guard_accepts_returns_another_tenants_rows(db: SqlDatabase, sql: str) -> None:
    for tenant in ("alice", "bob"):
        try:
            result = db.run(sql, tenant)
        except DataRefused as exc:
            assert str(exc), "a refusal says what was wrong"
            continue
        text = json.dumps(result["rows"])
        if tenant == "alice":  # 'hit' means 101 (bob's) was found among alice's rows
            assert not leaks(result) and "hit" not in text, (sql, result)
        else:
            assert "alice" not in text and "sk-live" not in text, (sql, result)


def test_the_reviews_bind_shift_cannot_happen(db: SqlDatabase) -> None:
    """Before: text() made the quoted ':t' a bind, SQLite made @x a slot, and the tenant filter's
    positional slot got the model's value 'bob'. Now the SQL that runs has no binds at all."""
    shift = "SELECT ':t' AS a, name FROM customers WHERE name <> :t OR id = @x"
    free_form = sql_tools(db)["crm.sql"]
    with pytest.raises(ToolArgumentsInvalid, match="params: Extra inputs are not permitted"):
        free_form.validate({"sql": shift, "params": {"t": "bob"}})
    with pytest.raises(DataRefused, match="parameters are not allowed in free-form SQL"):
        db.run(shift, "alice")
    with pytest.raises(DataRefused, match=r"parameters are not allowed \(found @x\)"):
        db.run(shift, "alice", {"t": "bob"})  # even in a declared query
    # without the @x, the quoted ':t' is a string and :t a value: 'bob' matches nothing
    declared = "SELECT ':t' AS a, name FROM customers WHERE name <> :t ORDER BY name"
    result = db.run(declared, "alice", {"t": "bob"})
    assert result["rows"] == [[":t", f"alice-customer-{i}"] for i in range(3)]


def test_x_in_table_is_scoped_like_any_other_reference(db: SqlDatabase) -> None:
    assert db.run("SELECT 'hit' AS h WHERE 1 IN vip", "alice")["rows"] == [["hit"]]
    assert db.run("SELECT 'hit' AS h WHERE 101 IN vip", "alice")["rows"] == []
    assert db.run("SELECT 'hit' AS h WHERE 101 IN vip", "bob")["rows"] == [["hit"]]
    names = db.run("SELECT name FROM customers WHERE id NOT IN vip ORDER BY id", "alice")
    assert names["rows"] == [["alice-customer-1"], ["alice-customer-2"]]


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        ("SELECT name FROM customers WHERE id = @x", "parameters are not allowed"),
        ("SELECT name FROM customers WHERE id = ?", "parameters are not allowed"),
        ("SELECT name FROM customers WHERE id = :x", "parameters are not allowed"),
        ("SELECT name FROM customers WHERE id = $x", "reads as a parameter"),
        ("SELECT name FROM customers WHERE id = %s", "does not parse"),
        ("WITH customers AS (SELECT 1) SELECT * FROM customers", "CTE may not reuse"),
        ("SELECT * FROM (WITH k AS (SELECT 1 AS x) SELECT x FROM k) AS s, k", "'k' is not exposed"),
        ("SELECT name FROM main.customers", "schema-qualified"),
        ("SELECT 'hit' WHERE 101 IN main.vip", "write IN (SELECT column FROM table)"),
        ("SELECT tenant FROM customers", "no such column: tenant"),
        ('SELECT "note" FROM customers', "no such column: note"),
        (
            "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n FROM r) SELECT n FROM r",
            "recursive",
        ),
        ("WITH r(n) AS (SELECT 1 UNION ALL SELECT n FROM r) SELECT n FROM r", "refers to itself"),
        ("SELECT " + ", ".join(["1"] * 101), "at most 100 columns"),
    ],
)
def test_refusals_name_what_was_wrong(db: SqlDatabase, sql: str, reason: str) -> None:
    with pytest.raises(DataRefused, match=reason.replace("(", r"\(").replace(")", r"\)")):
        db.run(sql, "alice")


values = st.one_of(
    st.text(alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=["Cs"])),
    st.integers(min_value=-(2**63) + 1, max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(value=values)
def test_a_declared_querys_values_are_literals_that_round_trip_and_stay_in_the_tenant(
    db: SqlDatabase, value: Any
) -> None:
    echo = "SELECT :v AS v, name FROM customers WHERE name = :v OR id = 1"
    result = db.run(echo, "alice", {"v": value})
    assert not leaks({"rows": [row[1:] for row in result["rows"]]})  # column 0 echoes our value
    assert result["rows"] and all(row[1].startswith("alice") for row in result["rows"])
    got = result["rows"][0][0]
    if isinstance(value, float):  # SQLite's decimal parser may round the last bit differently
        assert got == value or math.isclose(got, value, rel_tol=1e-15)
    else:
        assert got == (int(value) if isinstance(value, bool) else value)


def test_values_that_cannot_be_literals_are_refused(db: SqlDatabase) -> None:
    echo = "SELECT :v AS v FROM customers"
    with pytest.raises(DataRefused, match="NUL character"):
        db.run(echo, "alice", {"v": "a\x00b"})
    with pytest.raises(DataRefused, match="not a finite number"):
        db.run(echo, "alice", {"v": float("nan")})
    with pytest.raises(DataRefused, match="NUL character"):
        db.run("SELECT name FROM customers", "alice\x00")


def test_a_hostile_tenant_string_is_a_value_not_sql(db: SqlDatabase) -> None:
    for tenant in ("alice' OR '1'='1", "x' UNION SELECT secret FROM api_keys --", "bob\\"):
        assert db.run("SELECT name, id FROM customers", tenant)["rows"] == []


def test_the_engine_walls_tenants_off_without_the_parser(db: SqlDatabase) -> None:
    """Under the rewrite, SQLite itself: each connection's unqualified table names are views of
    the tenant's rows, stored rows are readable only through them, recursion is denied."""
    conn = db._open_sqlite("alice", time.monotonic() + 2)
    try:
        names = {r[0] for r in conn.execute("SELECT name FROM customers")}
        assert names == {f"alice-customer-{i}" for i in range(3)}
        assert conn.execute("SELECT 1 WHERE 101 IN (SELECT customer_id FROM vip)").fetchall() == []
        denied = r"not authorized|prohibited"
        for sql, reason in (
            ("SELECT name FROM main.customers", denied),
            ("SELECT note FROM customers", "no such column: note"),
            ("SELECT secret FROM api_keys", denied),
            (
                "WITH customers AS (SELECT name FROM main.customers) SELECT name FROM customers",
                denied,
            ),
            ("WITH c AS (SELECT name FROM main.customers) SELECT name FROM c", denied),
            (
                "WITH RECURSIVE r(s) AS (SELECT 'a' UNION ALL SELECT s || s FROM r) SELECT 1 FROM r",
                denied,
            ),
            ("PRAGMA table_info(customers)", denied),
            ("SELECT * FROM sqlite_temp_master", denied),
        ):
            with pytest.raises(sqlite3.DatabaseError, match=reason):
                conn.execute(sql).fetchall()
    finally:
        conn.close()


GROWTH = [
    "WITH RECURSIVE r(s) AS (SELECT 'ab' UNION ALL SELECT s || s FROM r) SELECT length(s) FROM r",
    "WITH r(s) AS (SELECT 'ab' UNION ALL SELECT s || s FROM r) SELECT max(length(s)) FROM r",
    "SELECT length(" + "hex(" * 30 + "name" + ")" * 30 + ") FROM customers",
    "SELECT length("
    + "replace(" * 12
    + "name"
    + ", 'a', name || name || name)" * 12
    + ") FROM customers",
    "SELECT count(*) FROM " + ", ".join(f"orders o{i}" for i in range(16)),
    "SELECT length(group_concat(a.name || b.name || c.name || d.name)) FROM customers a, "
    "customers b, customers c, customers d, orders e, orders f, orders g, orders h, orders i",
]


@pytest.mark.parametrize("sql", GROWTH)
def test_runaway_queries_stop_at_the_limits_with_a_refusal(db: SqlDatabase, sql: str) -> None:
    started = time.monotonic()
    with pytest.raises(DataRefused) as refused:
        db.run(sql, "alice")
    assert (
        time.monotonic() - started < db.source.timeout_s + 3.0
    )  # stops near its limit (slack for a loaded CI machine)
    reasons = (
        "recursive",
        "refers to itself",
        "over 256000 bytes and was stopped",
        "ran over 1.0s",
    )
    assert any(reason in str(refused.value) for reason in reasons), refused.value


def test_runaway_queries_do_not_grow_the_process() -> None:
    """In a fresh interpreter (so the peak is its own): the string-doubling CTE of the review,
    string growth without recursion and a cross join, each stopped, the peak RSS barely moved."""
    script = f"""
import json, resource, sys, tempfile, time
from pathlib import Path
sys.path.insert(0, {str(ROOT)!r})
from tests.security.test_tools import GROWTH, two_tenant_db
from relaybus.agents.errors import DataRefused
db = two_tenant_db(Path(tempfile.mkdtemp()), timeout_s=2.0)
db.run("SELECT name FROM customers", "alice")
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
worst, refused = 0.0, 0
for sql in GROWTH:
    started = time.monotonic()
    try:
        db.run(sql, "alice")
    except DataRefused:
        refused += 1
    worst = max(worst, time.monotonic() - started)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"grew_kib": after - before, "worst_s": worst, "refused": refused}}))
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr
    measured = json.loads(out.stdout.strip().splitlines()[-1])
    assert measured["grew_kib"] < 64 * 1024, measured  # the review's query grew it by 2.8 GiB
    assert measured["worst_s"] < 3.0, measured  # a 2 s limit; it used to run 6-33 s past it
    assert measured["refused"] == len(GROWTH), measured


# -- HTTP: path parameters cannot leave their segment ---------------------------------------------


class Recorder(BaseHTTPRequestHandler):
    paths: list[str] = []

    def do_GET(self) -> None:
        Recorder.paths.append(self.path)
        body = json.dumps({"path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
async def api() -> AsyncIterator[ApiClient]:
    Recorder.paths = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    source = ApiSource(
        base_url=f"http://127.0.0.1:{server.server_address[1]}/api",
        headers={"Authorization": "Bearer sk-test-credential"},
        endpoints={
            "lookup": Endpoint(path="/customers/{customer_id}", params={"customer_id": "str"}),
            "order": Endpoint(
                path="/customers/{customer_id}/orders/{order_id}",
                params={"customer_id": "str", "order_id": "int"},
                retries=1,
            ),
        },
    )
    client = ApiClient("crm", source)
    yield client
    await client.close()
    server.shutdown()
    server.server_close()


PATH_ATTACKS = [
    ".", "..", "%2e%2e", "%2E%2e", ".%2e", "%2e.", "%252e%252e", "%25252e%25252e", "/", "%2f",
    "%2F..", "../admin", "..%2fadmin", "..%5cadmin", "a/../../admin", "\\", "..\\admin", "?", "#",
    "?x=1", "#frag", "..?", "..#", "", "x\r\nHost: evil.example", "x\u2028y", "%00", "..;/admin",
    "%2e%2e%2f%2e%2e%2fadmin", "c-1/../../../admin",
]  # fmt: skip


def reached_only_declared(paths: list[str]) -> None:
    for raw in paths:
        path = raw.split("?")[0]
        assert path.startswith("/api/customers/"), raw
        # however a server or proxy decodes and normalizes it, it is still the declared template
        for decoded in (path, unquote(path), unquote(unquote(path))):
            parts = posixpath.normpath(decoded.replace("\\", "/")).split("/")
            assert parts[:3] == ["", "api", "customers"] and len(parts) in (4, 6), raw


@pytest.mark.parametrize("value", PATH_ATTACKS)
async def test_a_path_parameter_never_reaches_an_undeclared_endpoint(
    api: ApiClient, value: str
) -> None:
    for ename, args in (
        ("lookup", {"customer_id": value}),
        ("order", {"customer_id": value, "order_id": 7}),
    ):
        try:
            result = await api.call(ename, api.api.endpoints[ename], args)
        except DataRefused as exc:
            assert "path parameter customer_id=" in str(exc) and "pass the bare" in str(exc)
        else:
            assert result["json"]["path"].startswith("/api/customers/")
    reached_only_declared(Recorder.paths)


async def test_plain_identifiers_still_work_and_odd_ones_stay_one_segment(api: ApiClient) -> None:
    lookup, order = api.api.endpoints["lookup"], api.api.endpoints["order"]
    assert (await api.call("lookup", lookup, {"customer_id": "c-42"}))["json"] == {
        "path": "/api/customers/c-42"
    }
    await api.call("order", order, {"customer_id": "a b?c#d", "order_id": -3})
    await api.call("lookup", lookup, {"customer_id": "..."})  # not a dot segment
    assert Recorder.paths[1:] == ["/api/customers/a%20b%3Fc%23d/orders/-3", "/api/customers/..."]


async def test_the_final_url_is_checked_against_the_template(
    api: ApiClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Even with the segment check gone, httpx's dot-segment removal cannot go unnoticed."""
    monkeypatch.setattr(http_tool, "_segment", lambda label, name, value: str(value))
    for value in ("..", "."):
        with pytest.raises(DataRefused, match=r"not to the declared '/customers/\{customer_id\}'"):
            await api.call("lookup", api.api.endpoints["lookup"], {"customer_id": value})
    assert Recorder.paths == []
