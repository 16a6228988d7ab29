"""The ledger writer: batched, off the request path, never dropping a row nor counting one twice."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from django.core.exceptions import ValidationError
from django.db import DatabaseError, OperationalError, connection
from django.test.utils import CaptureQueriesContext

from conftest import TenantKey
from gateway.models import LedgerDeadLetter, UsageDaily, UsageRecord
from gateway.usage import ledger as ledger_module
from gateway.usage.ledger import LedgerWriter, _Retire
from gateway.usage.ledger_files import Claim, HeldFile, encode
from gateway.usage.ledger_rows import clean_row, insert_fields, insert_rows, preparer


def row(who: TenantKey, n: int, **fields: Any) -> dict[str, Any]:
    return {
        "created_at": datetime.now(UTC),
        "request_id": f"req_{n}",
        "tenant_id": who.tenant.pk,
        "api_key_id": who.key.pk,
        "requested_model": "m",
        "prompt_tokens": n,
        "completion_tokens": 1,
        "total_tokens": n + 1,
        "cost_usd": Decimal("0.000001") * n,
        "status_code": 200,
        "latency_ms": 3,
        **fields,
    }


def files(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.glob("*.jsonl"))


def spooled(directory: Path, rows: list[dict[str, Any]]) -> Path:
    """A spool file of ``rows`` that nobody holds, as a writer leaves it."""
    spool = HeldFile(directory, "spool")
    spool.append(b"".join(encode(r) for r in rows))
    spool.release()
    return spool.path


def rollup_calls() -> int:
    return sum(UsageDaily.objects.values_list("calls", flat=True))


def wait_until(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_rows_are_written_by_the_thread_in_batches(
    tenants: dict[str, TenantKey], tmp_path: Path
) -> None:
    writer = LedgerWriter(tmp_path / "ledger", flush_seconds=0.05, batch_size=100)
    for n in range(250):
        writer.record(row(tenants["alice"], n))
    wait_until(lambda: UsageRecord.objects.count() >= 250)
    writer.stop()
    assert UsageRecord.objects.count() == 250 == rollup_calls()
    assert UsageRecord.objects.get(request_id="req_7").cost_usd == Decimal("0.000007")
    assert files(tmp_path / "ledger") == [], "a clean stop leaves no journal behind"


class CountingQueue:
    """The writer's queue, counting the waits that a row being queued would end (each one a
    wake-up of the writer thread, and a GIL hand-off for the event loop that queued it)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.blocking_gets = 0

    def get(self, timeout: float | None = None) -> object:
        self.blocking_gets += 1
        return self.inner.get(timeout=timeout)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_rows_gather_into_a_batch_without_waking_the_writer_for_each(
    tenants: dict[str, TenantKey], tmp_path: Path
) -> None:
    writer = LedgerWriter(tmp_path / "ledger", flush_seconds=0.5, replay_seconds=60)
    counting = CountingQueue(writer._queue)
    writer._queue = counting  # type: ignore[assignment]
    writer.start()
    time.sleep(0.1)  # the writer is waiting for a first row
    gets_before = counting.blocking_gets
    for n in range(20):  # 20 rows over 0.2 s, one call's row every 10 ms
        writer.record(row(tenants["alice"], n))
        time.sleep(0.01)
    wait_until(lambda: UsageRecord.objects.count() == 20)
    assert counting.blocking_gets - gets_before <= 2, "one wake-up per batch, not per row"
    writer.stop()


def test_a_full_batch_is_written_without_waiting_out_the_flush_interval(
    tenants: dict[str, TenantKey], tmp_path: Path
) -> None:
    writer = LedgerWriter(tmp_path / "ledger", flush_seconds=60, batch_size=50, autostart=False)
    for n in range(120):  # a backlog: the writer finds it when it starts
        writer.record(row(tenants["alice"], n))
    writer.start()
    wait_until(lambda: UsageRecord.objects.count() >= 100, timeout=5)  # two full batches
    writer.stop()
    assert UsageRecord.objects.count() == 120


def test_stop_flushes_what_is_queued(tenants: dict[str, TenantKey], tmp_path: Path) -> None:
    writer = LedgerWriter(tmp_path / "ledger", flush_seconds=60)
    writer.start()
    for n in range(5):
        writer.record(row(tenants["bob"], n))
    writer.stop()
    assert UsageRecord.objects.filter(tenant=tenants["bob"].tenant).count() == 5


def test_rows_are_mended_where_they_are_built() -> None:
    mended = clean_row(
        {
            "requested_model": "x\x00y" + "m" * 300,
            "provider": "p\udc80",
            "prompt_tokens": -5,
            "completion_tokens": 10**12,
            "status_code": 200,
            "cost_usd": Decimal("1e30"),
            "audio_seconds": Decimal("NaN"),
        }
    )
    assert (
        mended["requested_model"].startswith("x\ufffdy") and len(mended["requested_model"]) == 200
    )
    assert mended["provider"] == "p\ufffd"
    assert (mended["prompt_tokens"], mended["completion_tokens"]) == (0, 2**31 - 1)
    assert mended["cost_usd"] == Decimal(10) ** 8 - 1
    assert mended["audio_seconds"] == 0
    assert mended["request_id"].startswith("req_"), "every row has a request id"


@pytest.mark.django_db
def test_every_field_is_prepared_as_django_prepares_it(tenants: dict[str, TenantKey]) -> None:
    """The writer's short cut (``preparer``) hands the database exactly what Django would, for
    a row as a call builds it, as a replay reads it back from JSON, and for odd values; what
    Django refuses, it refuses too."""
    built = row(tenants["alice"], 7, stream=True, error_type="", audio_seconds=Decimal("1.5"))
    replayed = orjson.loads(encode(built))  # times and decimals as text
    odd: dict[str, Any] = {
        "prompt_tokens": True,
        "status_code": "200",
        "tenant_id": str(tenants["alice"].tenant.pk),
        "api_key_id": None,
        "stream": 1,
        "requested_model": 5,
        "created_at": datetime(2026, 11, 30, 19, 5, tzinfo=timezone(timedelta(hours=-5))),
        "cost_usd": 0.125,
        "audio_seconds": Decimal("2.50"),
    }
    for field in insert_fields():
        prepare = preparer(field)
        for values in (built, replayed, odd):
            if field.attname not in values:
                continue
            value = values[field.attname]
            expected = field.get_db_prep_save(value, connection)
            got = prepare(value)
            assert (type(got), got) == (type(expected), expected), (field.attname, value)
    cost = preparer(UsageRecord._meta.get_field("cost_usd"))
    for refused in (Decimal("NaN"), Decimal("-Infinity"), "lots"):
        with pytest.raises(ValidationError):
            cost(refused)


@pytest.mark.django_db
def test_a_batch_lands_as_the_orm_saves_each_row(tenants: dict[str, TenantKey]) -> None:
    """What ``insert_rows`` stores (on PostgreSQL, one JSON document the server unpacks; on
    SQLite, rows of parameters) is what Django's ORM stores for the same row, field for field:
    text that needs quoting or escaping, text at its column's length, decimals with more places
    than their column keeps, times in another zone with microseconds, counts left empty, a
    field left to its default, and a row as a replay reads it back from JSON."""
    alice = tenants["alice"]
    eastern = timezone(timedelta(hours=-5, minutes=-30))
    rows = [
        row(alice, 1),
        row(
            alice,
            2,
            requested_model='it\'s \\ a "model" %s %(x)s {} [] \t \u00e9\u4e2d\U0001f600',
            error_message="x" * UsageRecord._meta.get_field("error_message").max_length,
            cost_usd=Decimal("0.12345678901234"),
            audio_seconds=Decimal("12.3456"),
            created_at=datetime(2026, 11, 30, 1, 2, 3, 456789, tzinfo=eastern),
            completion_tokens=None,
            total_tokens=None,
            stream=True,
            status_code=499,
            endpoint="embeddings",
        ),
        row(alice, 3, cost_usd=Decimal("1E+2"), served_model="", provider="fake"),
    ]
    rows.append(
        orjson.loads(encode(row(alice, 4, cost_usd=Decimal("0.5")))) | {"request_id": "req_4"}
    )
    assert insert_rows([clean_row(dict(r)) for r in rows]) == len(rows)
    for r in rows:
        UsageRecord.objects.create(**clean_row(dict(r, request_id=r["request_id"] + "-orm")))
    names = [f.attname for f in insert_fields() if f.attname != "request_id"]
    for r in rows:
        landed = UsageRecord.objects.filter(request_id=r["request_id"]).values(*names).get()
        saved = UsageRecord.objects.filter(request_id=r["request_id"] + "-orm").values(*names).get()
        assert landed == saved, r["request_id"]


def test_a_poisoned_row_is_mended_and_lands_with_every_other_row(
    tenants: dict[str, TenantKey], tmp_path: Path
) -> None:
    """The NUL character PostgreSQL refuses in text (it poisoned whole batches, for good)."""
    writer = LedgerWriter(tmp_path / "ledger", autostart=False)
    for n in range(300):
        model = "x\x00y" if n == 150 else "m"
        writer.record(row(tenants["alice"], n, requested_model=model))
    assert writer.flush() == 300
    assert UsageRecord.objects.count() == 300 == rollup_calls()
    assert UsageRecord.objects.get(request_id="req_150").requested_model == "x\ufffdy"
    assert not LedgerDeadLetter.objects.exists()


def test_a_row_the_database_refuses_goes_to_the_dead_letter_alone(
    tenants: dict[str, TenantKey], tmp_path: Path
) -> None:
    """A row no cleaning can mend (its tenant was deleted meanwhile): the batch is split until the
    row is alone; the other 499 land."""
    writer = LedgerWriter(tmp_path / "ledger", autostart=False)
    for n in range(500):
        orphan = {"tenant_id": 987654} if n == 321 else {}
        writer.record(row(tenants["alice"], n, **orphan))
    writer.flush()
    assert UsageRecord.objects.count() == 499 == rollup_calls()
    assert not UsageRecord.objects.filter(request_id="req_321").exists()
    dead = LedgerDeadLetter.objects.get()
    assert dead.request_id == "req_321" and dead.tenant_id == 987654
    assert "IntegrityError" in dead.reason or "foreign key" in dead.reason.lower()
    assert orjson.loads(dead.row)["prompt_tokens"] == 321


def test_inserts_are_idempotent_and_the_rollup_counts_each_row_once(
    tenants: dict[str, TenantKey],
) -> None:
    rows = [row(tenants["charlie"], n) for n in range(10)]
    assert insert_rows(rows[:6]) == 6
    assert insert_rows(rows) == 4, "the six already there are skipped"
    assert insert_rows(rows + rows) == 0
    assert UsageRecord.objects.count() == 10 == rollup_calls()
    total = sum(UsageDaily.objects.values_list("prompt_tokens", flat=True))
    assert total == sum(range(10))


def ledger_inserts(queries: CaptureQueriesContext) -> list[str]:
    table = UsageRecord._meta.db_table
    start = f"INSERT INTO {connection.ops.quote_name(table)}"
    return [q["sql"] for q in queries.captured_queries if q["sql"].startswith(start)]


def test_a_batch_of_new_rows_is_inserted_without_returning_and_a_replay_with_it(
    tenants: dict[str, TenantKey],
) -> None:
    """New rows take plain inserts (SQLite's RETURNING would hand the GIL back and forth once per
    row). When the batch meets a row already there, it is inserted again with RETURNING: each row
    lands and is counted in the rollup once."""
    rows = [row(tenants["charlie"], n) for n in range(300)]  # several statements on any backend
    assert insert_rows(rows[-1:]) == 1
    with CaptureQueriesContext(connection) as fresh:
        assert insert_rows(rows[:150]) == 150
    assert ledger_inserts(fresh)  # several statements on SQLite (37 rows each), one on PostgreSQL
    assert not any("RETURNING" in sql for sql in ledger_inserts(fresh))
    with CaptureQueriesContext(connection) as replay:
        assert insert_rows(rows) == 149, "the last row and the first 150 are already there"
    assert any("RETURNING" in sql for sql in ledger_inserts(replay))
    assert UsageRecord.objects.count() == 300 == rollup_calls()
    total = sum(UsageDaily.objects.values_list("prompt_tokens", flat=True))
    assert total == sum(range(300))


def test_statements_that_landed_before_the_one_that_met_a_row_are_rolled_back_with_it(
    tenants: dict[str, TenantKey],
) -> None:
    """Only the batch's last row is already there: on SQLite (37 rows a statement) the plain
    statements before the last one land, then the last one comes up short; all of them roll back
    and the RETURNING pass inserts the other 299, each counted in the rollup once. Were the first
    statements kept, the RETURNING pass would find their rows there and the rollup would miss
    them."""
    rows = [row(tenants["charlie"], n) for n in range(300)]
    assert insert_rows(rows[-1:]) == 1
    with CaptureQueriesContext(connection) as replay:
        assert insert_rows(rows) == 299
    plain = [sql for sql in ledger_inserts(replay) if "RETURNING" not in sql]
    per_statement = connection.ops.bulk_batch_size(insert_fields(), rows)
    statements = -(-len(rows) // per_statement)
    assert len(plain) == statements  # those before the last landed, the last came up short
    if connection.vendor == "sqlite":
        assert statements > 1
    assert UsageRecord.objects.count() == 300 == rollup_calls()
    total = sum(UsageDaily.objects.values_list("prompt_tokens", flat=True))
    assert total == sum(range(300))


def test_a_failing_database_spools_rows_and_the_running_writer_replays_them_when_it_answers(
    tenants: dict[str, TenantKey], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "ledger"
    writer = LedgerWriter(directory, flush_seconds=0.02, retries=2, replay_seconds=0.1)
    writer._backoff.set()  # no waiting between retries in this test
    real_insert = ledger_module.insert_rows

    def down(*args: object, **kwargs: object) -> None:
        raise OperationalError("connection refused")

    with monkeypatch.context() as patch:
        patch.setattr(ledger_module, "insert_rows", down)
        patch.setattr(ledger_module, "database_answers", lambda: False)
        for n in range(30):
            writer.record(row(tenants["charlie"], n))
        wait_until(lambda: any(name.startswith("spool-") for name in files(directory)))
        for n in range(30, 40):
            writer.record(row(tenants["charlie"], n))
        time.sleep(0.3)
        assert UsageRecord.objects.count() == 0
    assert ledger_module.insert_rows is real_insert
    wait_until(lambda: UsageRecord.objects.count() == 40)  # replayed while the writer runs
    wait_until(lambda: not any(name.startswith("spool-") for name in files(directory)))
    writer.stop()
    assert UsageRecord.objects.count() == 40 == rollup_calls()
    assert files(directory) == []


def test_a_database_that_answers_but_fails_every_insert_spools_rather_than_blames(
    tenants: dict[str, TenantKey], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refused batch is only split when the database still answers a query: an outage never
    sends good rows to the dead letter."""
    writer = LedgerWriter(tmp_path / "ledger", retries=1, autostart=False)

    def refused(*args: object, **kwargs: object) -> None:
        raise DatabaseError("server closed the connection unexpectedly")

    monkeypatch.setattr(ledger_module, "insert_rows", refused)
    monkeypatch.setattr(ledger_module, "database_answers", lambda: False)
    for n in range(8):
        writer.record(row(tenants["alice"], n))
    writer.flush()
    assert not LedgerDeadLetter.objects.exists()
    spool = writer._spool
    assert spool is not None and len(spool.path.read_bytes().splitlines()) == 8


def test_the_journal_of_a_killed_process_is_replayed_once(
    tenants: dict[str, TenantKey], tmp_path: Path
) -> None:
    """A process that dies leaves its journal unclaimed (its lock dies with it); another writer
    replays it. Rows the dead process had already written are not counted again."""
    directory = tmp_path / "ledger"
    dead = LedgerWriter(directory, autostart=False, batch_size=100)
    for n in range(250):
        dead.record(row(tenants["alice"], n))
    dead._handle([dead._queue.get() for _ in range(100)])  # it wrote 100 rows, then died
    assert dead._segment is not None
    with dead._segment.path.open("ab") as segment:
        segment.write(b'{"request_id": "req_torn", "tena')  # killed in the middle of a line
    assert Claim.take(dead._segment.path) is None, "a live process's journal is not claimable"
    die(dead)

    survivor = LedgerWriter(directory, autostart=False)
    assert survivor.replay() == 250
    assert UsageRecord.objects.count() == 250 == rollup_calls()
    assert files(directory) == []


def die(writer: LedgerWriter) -> None:
    """What the kernel does when a process dies: every file it held is let go (its live journal
    segment, and the segments waiting to be retired)."""
    for item in writer._drain():
        if isinstance(item, _Retire):
            item.segment.release()
    assert writer._segment is not None
    writer._segment.release()


def test_an_unclaimed_file_is_replayed_by_one_writer_only(
    tenants: dict[str, TenantKey], tmp_path: Path
) -> None:
    spool = spooled(tmp_path / "ledger", [row(tenants["bob"], n) for n in range(20)])
    first = Claim.take(spool)
    assert first is not None
    assert Claim.take(spool) is None, "held by the first replay"
    assert len(first.rows(100)) == 20
    first.done()
    assert Claim.take(spool) is None, "gone once replayed"


def test_a_replay_cut_short_resumes_without_counting_twice(
    tenants: dict[str, TenantKey], tmp_path: Path
) -> None:
    directory = tmp_path / "ledger"
    claim = Claim.take(spooled(directory, [row(tenants["bob"], n) for n in range(50)]))
    assert claim is not None
    insert_rows(claim.rows(30))
    claim.release()  # the replaying process died here
    assert LedgerWriter(directory, autostart=False).replay() == 50
    assert UsageRecord.objects.count() == 50 == rollup_calls()


def test_the_spool_of_an_earlier_version_is_adopted(
    tenants: dict[str, TenantKey], tmp_path: Path
) -> None:
    old = tmp_path / "ledger-spool.replaying"
    old.write_bytes(b"".join(encode(row(tenants["alice"], n)) for n in range(3)))
    writer = LedgerWriter(tmp_path / "ledger", flush_seconds=0.02, legacy_spools=[old])
    writer.start()
    wait_until(lambda: UsageRecord.objects.count() == 3)
    writer.stop()
    assert not old.exists()


def test_journal_segments_rotate_and_retire(tenants: dict[str, TenantKey], tmp_path: Path) -> None:
    directory = tmp_path / "ledger"
    writer = LedgerWriter(directory, autostart=False, segment_bytes=1)
    writer.record(row(tenants["alice"], 1))
    first = writer._segment
    writer._rotate()
    writer.record(row(tenants["alice"], 2))
    assert first is not None and first.path.exists() and len(files(directory)) == 2
    writer.flush()
    assert not first.path.exists(), "every row of the retired segment is in the ledger"
    writer.stop()
    assert files(directory) == [] and UsageRecord.objects.count() == 2


@pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL refuses NUL in text")
def test_postgresql_takes_the_mended_row(tenants: dict[str, TenantKey]) -> None:
    with pytest.raises(DatabaseError):
        insert_rows([row(tenants["alice"], 1, requested_model="x\x00y")])
    assert insert_rows([clean_row(row(tenants["alice"], 1, requested_model="x\x00y"))]) == 1


def test_an_operator_sees_a_dead_letter_and_retries_it_once_fixed(
    tenants: dict[str, TenantKey], admin_client: Any
) -> None:
    good = row(tenants["alice"], 7)
    LedgerDeadLetter.objects.create(
        request_id="req_7",
        tenant_id=good["tenant_id"],
        reason="IntegrityError: fk",
        row=_json(good),
    )
    page = admin_client.get("/admin/gateway/ledgerdeadletter/")
    assert (
        page.status_code == 200 and b"req_7" in page.content and b"IntegrityError" in page.content
    )
    letter = LedgerDeadLetter.objects.get()
    answer = admin_client.post(
        "/admin/gateway/ledgerdeadletter/",
        {"action": "retry", "_selected_action": [letter.pk]},
        follow=True,
    )
    assert b"1 row(s) are in the ledger" in answer.content
    assert not LedgerDeadLetter.objects.exists()
    assert UsageRecord.objects.get().request_id == "req_7" and rollup_calls() == 1


def _json(value: dict[str, Any]) -> str:
    return encode(value).decode()


def test_the_journal_is_fsynced_in_a_segment_nobody_writes_to(
    tenants: dict[str, TenantKey], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write to a page the kernel is writing back waits for it: the event loop's appends must
    never meet an fsync, so the writer rotates first and fsyncs the segment it left."""
    writer = LedgerWriter(tmp_path / "ledger", autostart=False)
    synced: list[tuple[HeldFile, HeldFile | None]] = []
    monkeypatch.setattr(HeldFile, "sync", lambda self: synced.append((self, writer._segment)))
    writer.record(row(tenants["alice"], 1))
    journaled = writer._segment
    writer.flush()
    assert [segment for segment, _ in synced] == [journaled]
    assert all(live is not segment for segment, live in synced), "never the live segment"
    assert journaled is not None and not journaled.path.exists(), "retired once written"
    writer.stop()


def test_a_replay_that_fails_does_not_stop_the_writer(
    tenants: dict[str, TenantKey], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A directory the writer cannot read (or any fault of its housekeeping) is logged and tried
    again; the thread that writes everyone's rows keeps writing them."""

    def unreadable(directory: Path) -> Any:
        raise PermissionError(13, "Permission denied", str(directory))

    monkeypatch.setattr(ledger_module, "unclaimed", unreadable)
    writer = LedgerWriter(tmp_path / "ledger", flush_seconds=0.02, replay_seconds=0.05)
    for n in range(20):
        writer.record(row(tenants["bob"], n))
        time.sleep(0.01)
    wait_until(lambda: UsageRecord.objects.count() == 20)
    writer.stop()


def test_lines_that_are_not_rows_are_skipped_as_torn(
    tenants: dict[str, TenantKey], tmp_path: Path
) -> None:
    path = spooled(tmp_path / "ledger", [row(tenants["bob"], 1)])
    with path.open("ab") as spool:
        spool.write(b'[1, 2]\n"text"\n')
    claim = Claim.take(path)
    assert claim is not None
    assert [r["request_id"] for r in claim.rows(10)] == ["req_1"] and claim.torn == 2
    claim.release()
