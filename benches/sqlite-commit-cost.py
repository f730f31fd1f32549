#!/usr/bin/env python3
"""What each way of making a commit survive a lost WAL costs, per commit, on this disk.

A commit the size of the agent's (one meta value and one 200-byte outbox row) with
synchronous=FULL, 200 times, under: WAL (the agent's mode); WAL with a TRUNCATE checkpoint after
every commit (what the agent does after critical commits only); WAL with a PASSIVE checkpoint;
and the rollback journal modes DELETE and TRUNCATE. Python's sqlite3 (the system SQLite), so the
figures are orders of magnitude for the agent's bundled SQLite on the same disk.

    python3 benches/sqlite-commit-cost.py [DIR]     # DIR: where the databases go (default: a temp dir)
"""
import os
import sqlite3
import sys
import tempfile
import time


def run(directory, mode, checkpoint, n=200):
    path = os.path.join(directory, f"{mode}-{checkpoint or 'none'}.db")
    c = sqlite3.connect(path, isolation_level=None)
    c.execute(f"PRAGMA journal_mode={mode}")
    c.execute("PRAGMA synchronous=FULL")
    c.execute("CREATE TABLE meta(key TEXT PRIMARY KEY, value BLOB)")
    c.execute("CREATE TABLE outbox(seq INTEGER PRIMARY KEY, body TEXT)")
    started = time.perf_counter()
    for i in range(n):
        c.execute("BEGIN")
        c.execute("INSERT OR REPLACE INTO meta VALUES('next_seq', ?)", (str(i),))
        c.execute("INSERT INTO outbox(body) VALUES(?)", ("y" * 200,))
        c.execute("COMMIT")
        if checkpoint:
            c.execute(f"PRAGMA wal_checkpoint({checkpoint})").fetchall()
    c.close()
    return (time.perf_counter() - started) / n * 1000


def main():
    directory = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp()
    print(f"SQLite {sqlite3.sqlite_version}, databases in {directory}")
    print("| journal | checkpoint after each commit | ms per commit |")
    print("| --- | --- | --- |")
    for mode, checkpoint in [("WAL", None), ("WAL", "TRUNCATE"), ("WAL", "PASSIVE"),
                             ("DELETE", None), ("TRUNCATE", None)]:
        ms = run(directory, mode, checkpoint)
        print(f"| {mode} | {checkpoint or '-'} | {ms:.1f} |")


if __name__ == "__main__":
    main()
