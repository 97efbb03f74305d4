"""Durable runs: a SQLite (WAL) store of runs, their programs at their last finished step, and a
journal of tool calls.

* A program's row holds its snapshot (state, position record, conversations, counts), written in
  one transaction at every step boundary; its inputs; its workflow's description and fingerprint;
  and, once it ends, its status and result.
* A tool call's row is written when the call starts and again with its result when it ends, keyed
  by (run, program, call) where the call id names the lane, the step, its visit and the call's
  index within the step: the same on every resume. A call whose result is in the journal is never
  made again; one that was in flight when the process died is made again only when its tool is
  idempotent.

Many processes may share one file: SQLite serialises writers, WAL lets readers go on, and a busy
database is waited for (`timeout`).
"""
from __future__ import annotations

import json
import os
import secrets
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, created REAL NOT NULL, meta TEXT NOT NULL DEFAULT '{}');
CREATE TABLE IF NOT EXISTS programs (
    run_id TEXT NOT NULL, program_id TEXT NOT NULL, seq INTEGER NOT NULL,
    workflow TEXT NOT NULL, fingerprint TEXT NOT NULL, description TEXT NOT NULL,
    inputs TEXT NOT NULL, snapshot TEXT NOT NULL, steps INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL, error TEXT, result TEXT, started REAL NOT NULL, updated REAL NOT NULL,
    PRIMARY KEY (run_id, program_id));
CREATE TABLE IF NOT EXISTS tool_calls (
    run_id TEXT NOT NULL, program_id TEXT NOT NULL, call_id TEXT NOT NULL, tool TEXT NOT NULL,
    status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, result TEXT, updated REAL NOT NULL,
    PRIMARY KEY (run_id, program_id, call_id));
"""
FINISHED = ("done", "failed")          # reported on resume, never rerun


def default_path() -> Path:
    """runs.db under the user's data dir ($XDG_DATA_HOME/agentrt, else ~/.local/share/agentrt)."""
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "agentrt" / "runs.db"


def new_run_id() -> str:
    return time.strftime("run-%Y%m%d-%H%M%S-") + secrets.token_hex(3)


@dataclass(slots=True, frozen=True)
class ProgramRecord:
    run_id: str
    program_id: str
    workflow: str
    fingerprint: str
    description: dict[str, Any]
    inputs: dict[str, Any]
    snapshot: dict[str, Any]
    steps: int
    status: str
    error: str | None
    result: dict[str, Any] | None
    started: float
    updated: float

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


@dataclass(slots=True, frozen=True)
class JournalEntry:
    tool: str
    status: str                        # "started" | "done"
    attempts: int
    result: dict[str, Any] | None      # {"value": ..., "error": ...} once done


class CheckpointStore:
    """`CheckpointStore("runs.db")`; every write is its own transaction."""

    def __init__(self, path: str | Path, *, timeout: float = 30.0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=timeout, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")     # WAL + NORMAL: a commit survives a killed process
        with self.transaction() as db:
            for statement in filter(str.strip, SCHEMA.split(";")):
                db.execute(statement)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._commit()

    def _commit(self) -> None:
        self._db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()

    # ------------------------------------------------------------------ runs
    def create_run(self, run_id: str, meta: dict[str, Any]) -> None:
        with self.transaction() as db:
            db.execute("INSERT OR IGNORE INTO runs VALUES (?, ?, ?)", (run_id, time.time(), _dump(meta)))

    def run_meta(self, run_id: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT meta FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return json.loads(row[0]) if row else None

    def runs(self) -> list[dict[str, Any]]:
        """Every run, newest first, with its programs counted by status."""
        out = []
        for run_id, created, meta in self._db.execute("SELECT * FROM runs ORDER BY created DESC, run_id"):
            counts = dict(self._db.execute("SELECT status, COUNT(*) FROM programs WHERE run_id = ? GROUP BY status",
                                           (run_id,)).fetchall())
            out.append({"run_id": run_id, "created": created, "meta": json.loads(meta), "programs": counts})
        return out

    # ------------------------------------------------------------------ programs
    def add_program(self, run_id: str, program_id: str, workflow: str, fingerprint: str,
                    description: dict[str, Any], inputs: dict[str, Any], snapshot: dict[str, Any]) -> None:
        now = time.time()
        with self.transaction() as db:
            seq = db.execute("SELECT COUNT(*) FROM programs WHERE run_id = ?", (run_id,)).fetchone()[0]
            db.execute("INSERT INTO programs VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, 'running', NULL, NULL, ?, ?)",
                       (run_id, program_id, seq, workflow, fingerprint, _dump(description), _dump(inputs),
                        _dump(snapshot), now, now))

    def save_step(self, run_id: str, program_id: str, snapshot: dict[str, Any]) -> None:
        """The program after a finished step: state, position, conversations and counts at once."""
        text = _dump(snapshot)
        with self.transaction() as db:
            self._write_step(db, run_id, program_id, text, snapshot["position"]["steps"])

    def _write_step(self, db: sqlite3.Connection, run_id: str, program_id: str, text: str, steps: int) -> None:
        db.execute("UPDATE programs SET snapshot = ?, steps = ?, status = 'running', updated = ? "
                   "WHERE run_id = ? AND program_id = ?", (text, steps, time.time(), run_id, program_id))

    def finish_program(self, run_id: str, program_id: str, status: str, error: str | None,
                       result: dict[str, Any], snapshot: dict[str, Any]) -> None:
        with self.transaction() as db:
            db.execute("UPDATE programs SET status = ?, error = ?, result = ?, snapshot = ?, steps = ?, updated = ? "
                       "WHERE run_id = ? AND program_id = ?",
                       (status, error, _dump(result), _dump(snapshot), snapshot["position"]["steps"], time.time(),
                        run_id, program_id))

    def programs(self, run_id: str) -> list[ProgramRecord]:
        rows = self._db.execute("SELECT run_id, program_id, workflow, fingerprint, description, inputs, snapshot, "
                                "steps, status, error, result, started, updated FROM programs WHERE run_id = ? "
                                "ORDER BY seq", (run_id,)).fetchall()
        return [ProgramRecord(r[0], r[1], r[2], r[3], json.loads(r[4]), json.loads(r[5]), json.loads(r[6]), r[7],
                              r[8], r[9], json.loads(r[10]) if r[10] else None, r[11], r[12]) for r in rows]

    # ------------------------------------------------------------------ the tool-call journal
    def call(self, run_id: str, program_id: str, call_id: str) -> JournalEntry | None:
        row = self._db.execute("SELECT tool, status, attempts, result FROM tool_calls WHERE run_id = ? AND "
                               "program_id = ? AND call_id = ?", (run_id, program_id, call_id)).fetchone()
        return JournalEntry(row[0], row[1], row[2], json.loads(row[3]) if row[3] else None) if row else None

    def call_started(self, run_id: str, program_id: str, call_id: str, tool: str) -> int:
        """Record that the call is being made; returns how many times it has been started."""
        with self.transaction() as db:
            db.execute("INSERT INTO tool_calls VALUES (?, ?, ?, ?, 'started', 1, NULL, ?) "
                       "ON CONFLICT DO UPDATE SET status = 'started', attempts = attempts + 1, updated = excluded.updated",
                       (run_id, program_id, call_id, tool, time.time()))
            return db.execute("SELECT attempts FROM tool_calls WHERE run_id = ? AND program_id = ? AND call_id = ?",
                              (run_id, program_id, call_id)).fetchone()[0]

    def call_done(self, run_id: str, program_id: str, call_id: str, result: dict[str, Any]) -> None:
        text = _dump(result)
        with self.transaction() as db:
            db.execute("UPDATE tool_calls SET status = 'done', result = ?, updated = ? WHERE run_id = ? AND "
                       "program_id = ? AND call_id = ?", (text, time.time(), run_id, program_id, call_id))

    def integrity(self) -> str:
        return self._db.execute("PRAGMA integrity_check").fetchone()[0]


def _dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
