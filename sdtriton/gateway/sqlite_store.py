"""The embedded job store: one SQLite file in WAL mode, shared by the threads and processes of one host.

Every change is one ``BEGIN IMMEDIATE`` transaction (SQLite's write lock, taken at the start, so two claims
never read the same queued job); a process killed in the middle of one leaves the file as it was before it.
``synchronous=NORMAL`` with WAL keeps every committed change across a crash of the process (a power cut may lose
the last ones). Each thread has its own connection.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from sdtriton.gateway.store import (
    CANCELLED,
    DEFAULT_MAX_ATTEMPTS,
    FAILED,
    JOB_ID_PREFIX,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    Claim,
    GeneratedImage,
    Job,
    JobStoreError,
    LeaseStatus,
    ResultImage,
    Submitted,
    WebhookDelivery,
    cancelled_error,
    check_final_status,
    check_lease,
    encode_request,
    interrupted_error,
)

# How long a connection waits for another's write lock before giving up (claims and finishes are short).
_BUSY_TIMEOUT_MS = 30_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    request TEXT NOT NULL,
    scope TEXT NOT NULL,
    idempotency_key TEXT,
    webhook TEXT,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    step INTEGER NOT NULL DEFAULT 0,
    total INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    owner TEXT,
    token TEXT,
    lease_expires_at REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency ON jobs (scope, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, seq);
CREATE INDEX IF NOT EXISTS jobs_lease ON jobs (status, lease_expires_at);
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (finished_at);
CREATE INDEX IF NOT EXISTS jobs_scope ON jobs (scope, seq);
CREATE TABLE IF NOT EXISTS images (
    job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    format TEXT NOT NULL,
    seed INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (job_id, idx)
);
CREATE TABLE IF NOT EXISTS deliveries (
    job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    attempt INTEGER NOT NULL,
    at REAL NOT NULL,
    status_code INTEGER,
    error TEXT,
    duration_s REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS deliveries_job ON deliveries (job_id);
"""

_JOB_COLUMNS = (
    "id, status, request, scope, idempotency_key, webhook, created_at, started_at, finished_at, step, total, error, "
    "owner, lease_expires_at, attempts, cancel_requested"
)


class SqliteJobStore:
    """The :class:`~sdtriton.gateway.store.JobStore` in one SQLite file (created with its folder if missing).

    Args:
        path: The database file.
        result_ttl_s: How long a finished job (and its images) is kept; None keeps them for ever.
    """

    def __init__(self, path: str | Path, *, result_ttl_s: float | None = None):
        if result_ttl_s is not None and not result_ttl_s > 0:
            raise JobStoreError(f"result_ttl_s must be > 0 or None, got {result_ttl_s}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.result_ttl_s = result_ttl_s
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        connection = self._connection()
        # WAL is a property of the file: set once, every later connection (of any process) uses it.
        connection.execute("PRAGMA journal_mode=WAL")
        connection.executescript(_SCHEMA)

    def __repr__(self) -> str:
        return f"SqliteJobStore({str(self.path)!r})"

    # The protocol.

    def create(
        self,
        request: Mapping[str, Any],
        *,
        scope: str = "",
        idempotency_key: str | None = None,
        webhook: str | None = None,
    ) -> Submitted:
        body = encode_request(request)
        with self._write() as connection:
            self._purge_expired(connection)
            if idempotency_key is not None:
                row = connection.execute(
                    "SELECT id FROM jobs WHERE scope = ? AND idempotency_key = ?", (scope, idempotency_key)
                ).fetchone()
                if row is not None:
                    return Submitted(self._job(connection, row[0]), created=False)
            job_id = JOB_ID_PREFIX + secrets.token_hex(16)
            connection.execute(
                "INSERT INTO jobs (id, status, request, scope, idempotency_key, webhook, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (job_id, QUEUED, body, scope, idempotency_key, webhook, time.time()),
            )
            return Submitted(self._job(connection, job_id), created=True)

    def get(self, job_id: str) -> Job | None:
        return self._job(self._connection(), job_id)

    def queue_position(self, job_id: str) -> int | None:
        row = (
            self._connection()
            .execute(
                "SELECT (SELECT COUNT(*) FROM jobs WHERE status = ? AND seq < this.seq) FROM jobs AS this "
                "WHERE this.id = ? AND this.status = ?",
                (QUEUED, job_id, QUEUED),
            )
            .fetchone()
        )
        return row[0] if row is not None else None

    def claim(self, owner: str, *, lease_s: float, max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> Claim | None:
        check_lease(lease_s)
        with self._write() as connection:
            while True:
                now = time.time()
                row = connection.execute(
                    "SELECT id, attempts, cancel_requested FROM jobs WHERE status = ? AND lease_expires_at < ? "
                    "ORDER BY lease_expires_at LIMIT 1",
                    (RUNNING, now),
                ).fetchone()
                if row is None:
                    row = connection.execute(
                        "SELECT id, attempts, cancel_requested FROM jobs WHERE status = ? ORDER BY seq LIMIT 1",
                        (QUEUED,),
                    ).fetchone()
                if row is None:
                    return None
                job_id, attempts, cancel_requested = row
                if cancel_requested:
                    self._end(connection, job_id, CANCELLED, error=cancelled_error())
                    continue
                if attempts >= max_attempts:
                    self._end(connection, job_id, FAILED, error=interrupted_error())
                    continue
                token = secrets.token_hex(16)
                connection.execute(
                    "UPDATE jobs SET status = ?, owner = ?, token = ?, lease_expires_at = ?, "
                    "started_at = COALESCE(started_at, ?), attempts = attempts + 1, step = 0, total = 0 WHERE id = ?",
                    (RUNNING, owner, token, now + lease_s, now, job_id),
                )
                return Claim(self._job(connection, job_id), token)

    def renew(
        self, job_id: str, token: str, *, lease_s: float, step: int | None = None, total: int | None = None
    ) -> LeaseStatus:
        check_lease(lease_s)
        with self._write() as connection:
            held = connection.execute(
                "UPDATE jobs SET lease_expires_at = ?, step = COALESCE(?, step), total = COALESCE(?, total) "
                "WHERE id = ? AND token = ? AND status = ?",
                (time.time() + lease_s, step, total, job_id, token, RUNNING),
            ).rowcount
            row = connection.execute("SELECT cancel_requested FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return LeaseStatus(held=bool(held), cancel_requested=bool(row and row[0]))

    def finish(
        self,
        job_id: str,
        token: str,
        *,
        status: str,
        images: Sequence[GeneratedImage] = (),
        error: Mapping[str, Any] | None = None,
        total: int | None = None,
    ) -> bool:
        check_final_status(status)
        with self._write() as connection:
            if not self._holds(connection, job_id, token):
                return False
            if total is not None:
                connection.execute("UPDATE jobs SET total = ? WHERE id = ?", (total, job_id))
            self._end(connection, job_id, status, error=error)
            connection.executemany(
                "INSERT INTO images (job_id, idx, format, seed, data) VALUES (?, ?, ?, ?, ?)",
                [(job_id, index, image.format, image.seed, image.data) for index, image in enumerate(images)],
            )
            return True

    def release(self, job_id: str, token: str) -> bool:
        with self._write() as connection:
            if not self._holds(connection, job_id, token):
                return False
            (cancel_requested,) = connection.execute(
                "SELECT cancel_requested FROM jobs WHERE id = ?", (job_id,)
            ).fetchone()
            if cancel_requested:
                self._end(connection, job_id, CANCELLED, error=cancelled_error())
            else:
                connection.execute(
                    "UPDATE jobs SET status = ?, token = NULL, lease_expires_at = NULL, attempts = attempts - 1, "
                    "step = 0, total = 0 WHERE id = ?",
                    (QUEUED, job_id),
                )
            return True

    def request_cancel(self, job_id: str) -> Job | None:
        with self._write() as connection:
            job = self._job(connection, job_id)
            if job is None:
                return None
            if job.status == QUEUED:
                self._end(connection, job_id, CANCELLED, error=cancelled_error())
            elif job.status == RUNNING:
                connection.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
            return self._job(connection, job_id)

    def image(self, job_id: str, index: int) -> tuple[bytes, str] | None:
        if self.get(job_id) is None:
            return None
        row = (
            self._connection()
            .execute("SELECT data, format FROM images WHERE job_id = ? AND idx = ?", (job_id, index))
            .fetchone()
        )
        return (bytes(row[0]), row[1]) if row is not None else None

    def list_recent(self, *, limit: int = 20, scope: str | None = None) -> list[Job]:
        connection = self._connection()
        where, parameters = self._live_filter()
        if scope is not None:
            where += " AND scope = ?"
            parameters = (*parameters, scope)
        rows = connection.execute(
            f"SELECT id FROM jobs WHERE {where} ORDER BY seq DESC LIMIT ?", (*parameters, limit)
        ).fetchall()
        return [job for (job_id,) in rows if (job := self._job(connection, job_id)) is not None]

    def record_delivery(self, job_id: str, delivery: WebhookDelivery) -> bool:
        with self._write() as connection:
            if self._job(connection, job_id) is None:
                return False
            connection.execute(
                "INSERT INTO deliveries (job_id, attempt, at, status_code, error, duration_s) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (job_id, delivery.attempt, delivery.at, delivery.status_code, delivery.error, delivery.duration_s),
            )
            return True

    def count_active(self) -> dict[str, int]:
        rows = (
            self._connection()
            .execute("SELECT status, COUNT(*) FROM jobs WHERE status IN (?, ?) GROUP BY status", (QUEUED, RUNNING))
            .fetchall()
        )
        return {QUEUED: 0, RUNNING: 0, **dict(rows)}

    def close(self) -> None:
        with self._lock:
            connections, self._connections = self._connections, []
        for connection in connections:
            connection.close()
        self._local = threading.local()

    # Connections and transactions.

    def _connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            # isolation_level=None: no implicit transactions; every write opens its own BEGIN IMMEDIATE.
            connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            connection.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
            connection.execute("PRAGMA foreign_keys = ON")
            connection.execute("PRAGMA synchronous = NORMAL")
            self._local.connection = connection
            with self._lock:
                self._connections.append(connection)
        return connection

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed when the block ends, rolled back when it raises."""
        connection = self._connection()
        connection.execute("BEGIN IMMEDIATE")
        try:
            yield connection
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")

    # Rows.

    def _live_filter(self) -> tuple[str, tuple[Any, ...]]:
        """The WHERE clause of jobs not expired."""
        if self.result_ttl_s is None:
            return "1 = 1", ()
        return "(finished_at IS NULL OR finished_at >= ?)", (time.time() - self.result_ttl_s,)

    def _purge_expired(self, connection: sqlite3.Connection) -> None:
        if self.result_ttl_s is not None:
            connection.execute("DELETE FROM jobs WHERE finished_at < ?", (time.time() - self.result_ttl_s,))

    def _job(self, connection: sqlite3.Connection, job_id: str) -> Job | None:
        where, parameters = self._live_filter()
        row = connection.execute(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ? AND {where}", (job_id, *parameters)
        ).fetchone()
        if row is None:
            return None
        images = connection.execute(
            "SELECT idx, format, seed, length(data) FROM images WHERE job_id = ? ORDER BY idx", (job_id,)
        ).fetchall()
        deliveries = connection.execute(
            "SELECT attempt, at, status_code, error, duration_s FROM deliveries WHERE job_id = ? ORDER BY rowid",
            (job_id,),
        ).fetchall()
        fields: dict[str, Any] = dict(zip(_JOB_COLUMNS.split(", "), row, strict=True))
        error = fields.pop("error")
        fields |= {
            "request": json.loads(fields["request"]),
            "error": json.loads(error) if error is not None else None,
            "cancel_requested": bool(fields["cancel_requested"]),
        }
        return Job(
            **fields,
            images=tuple(ResultImage(*image) for image in images),
            deliveries=tuple(WebhookDelivery(*delivery) for delivery in deliveries),
        )

    @staticmethod
    def _holds(connection: sqlite3.Connection, job_id: str, token: str) -> bool:
        row = connection.execute(
            "SELECT 1 FROM jobs WHERE id = ? AND token = ? AND status = ?", (job_id, token, RUNNING)
        )
        return row.fetchone() is not None

    @staticmethod
    def _end(connection: sqlite3.Connection, job_id: str, status: str, *, error: Mapping[str, Any] | None) -> None:
        """The one place a job becomes final (succeeded jobs show their last step as the total)."""
        connection.execute(
            "UPDATE jobs SET status = ?, finished_at = ?, error = ?, token = NULL, lease_expires_at = NULL, "
            "step = CASE WHEN ? = ? THEN total ELSE step END WHERE id = ?",
            (status, time.time(), json.dumps(dict(error)) if error is not None else None, status, SUCCEEDED, job_id),
        )
