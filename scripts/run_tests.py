"""The test command behind `make test`: the suite on the embedded PostgreSQL, then again
on a second server when one is reachable ($PGQUEUE_TEST_DSN, else the local server at
127.0.0.1:5432), so that two PostgreSQL major versions are covered."""

from __future__ import annotations

import os
import subprocess
import sys

import psycopg

LOCAL_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"


def reachable(dsn: str) -> str | None:
    """The server's version when it answers within a few seconds, else None."""
    try:
        with psycopg.connect(dsn, connect_timeout=3) as conn:
            row = conn.execute("SHOW server_version").fetchone()
    except psycopg.Error:
        return None
    return None if row is None else str(row[0])


def run_suite(label: str, env: dict[str, str], extra: list[str]) -> int:
    print(f"\n=== test suite on {label} ===", flush=True)
    cmd = [sys.executable, "-m", "pytest", *extra]
    return subprocess.call(cmd, env=env)


def main() -> int:
    extra = sys.argv[1:]
    base_env = {k: v for k, v in os.environ.items() if k != "PGQUEUE_TEST_DSN"}
    results = {"embedded PostgreSQL": run_suite("embedded PostgreSQL", base_env, extra)}
    second = os.environ.get("PGQUEUE_TEST_DSN") or LOCAL_SERVER
    version = reachable(second)
    if version is None:
        print(f"\nno second server reachable at {second}: embedded run only", flush=True)
    else:
        label = f"PostgreSQL {version} ({second.split('@')[-1]})"
        results[label] = run_suite(label, {**base_env, "PGQUEUE_TEST_DSN": second}, extra)
    print("\n=== summary ===")
    for label, code in results.items():
        print(f"{label}: {'passed' if code == 0 else f'FAILED (exit {code})'}")
    return max(results.values())


if __name__ == "__main__":
    raise SystemExit(main())
