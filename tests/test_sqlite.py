"""connect_wal: several processes creating and switching the same new file to WAL at once."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from equal.data.sqlite import connect_wal


def test_connect_wal_sets_wal_and_normal(tmp_path: Path) -> None:
    conn = connect_wal(tmp_path / "a.sqlite", timeout=5.0)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
    conn.close()


def test_concurrent_first_opens_never_fail(tmp_path: Path) -> None:
    # Each process opens 40 brand-new files (the moment the WAL switch races), writes a row to each.
    script = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        from equal.data.sqlite import connect_wal

        root = Path(sys.argv[1])
        for i in range(40):
            conn = connect_wal(root / f"db{i}.sqlite", timeout=30.0)
            conn.execute("CREATE TABLE IF NOT EXISTS t (who TEXT)")
            conn.execute("INSERT INTO t VALUES (?)", (sys.argv[2],))
            conn.close()
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(tmp_path), str(k)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for k in range(6)
    ]
    for p in procs:
        _out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    for i in range(40):
        conn = connect_wal(tmp_path / f"db{i}.sqlite")
        rows = sorted(r[0] for r in conn.execute("SELECT who FROM t"))
        conn.close()
        assert rows == [str(k) for k in range(6)]
