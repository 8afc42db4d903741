"""The sandbox for generated code: real hostile programs, in both layers, must be contained and reported.

Every hostile program runs under the namespace layer (when this machine allows it) and under the basic fallback
(forced with ``isolation="basic"``), so a CI machine without user namespaces still runs the fallback tests and this
machine runs both.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from equal.errors import ConfigError
from equal.evaluate.sandbox import SandboxLimits, SandboxResult, run_program, run_programs, sandbox_isolation

# Small limits keep the hostile tests fast (the brief: timeout 2 s, 256 MB, 64 KB of output).
LIMITS = SandboxLimits(timeout_s=2.0, cpu_s=5, memory_mb=256, file_mb=1, max_procs=16, output_bytes=64 * 1024)

HAS_NAMESPACES = sandbox_isolation("auto") == "namespace"
LAYERS = [
    pytest.param(
        "namespace",
        marks=pytest.mark.skipif(not HAS_NAMESPACES, reason="no namespaces on this machine (the fallback runs)"),
    ),
    "basic",
]


@pytest.fixture
def tmp_root() -> Iterator[Path]:
    """A folder for the per-program directories, traversable by ``nobody`` (pytest's own tmp_path is 0700)."""
    root = Path(tempfile.mkdtemp(prefix="equal-sandbox-test-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _processes_under(root: Path) -> list[int]:
    """Host processes whose command line mentions ``root`` (the sandbox's bootstrap and program live there)."""
    found = []
    needle = str(root).encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline:
            found.append(int(entry))
    return found


def _run(code: str, layer: str, tmp_root: Path, limits: SandboxLimits = LIMITS) -> SandboxResult:
    result = run_program(code, limits=limits, isolation=layer, tmp_root=str(tmp_root))
    assert result.isolation == layer
    # Contained: nothing the program started is still running, and its directory is gone.
    assert _processes_under(tmp_root) == []
    assert list(tmp_root.iterdir()) == []
    return result


# --- configuration -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [("timeout_s", 0), ("timeout_s", float("inf")), ("timeout_s", True), ("cpu_s", 0), ("memory_mb", 8),
     ("file_mb", 0), ("max_procs", 0), ("output_bytes", 0), ("cpu_s", 1.5)],
)
def test_limits_are_validated_with_the_field_named(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=rf"sandbox\.{field}="):
        SandboxLimits(**{field: value})


def test_defaults_match_the_contract() -> None:
    limits = SandboxLimits()
    assert (limits.timeout_s, limits.cpu_s, limits.memory_mb, limits.file_mb, limits.max_procs) == (10.0, 10, 1024,
                                                                                                    16, 32)
    assert limits.output_bytes == 1 << 20


def test_unknown_isolation_and_bad_arguments_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"sandbox\.isolation="):
        run_program("pass", isolation="chroot")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="workers"):
        run_programs(["pass"], workers=0)
    with pytest.raises(ConfigError, match="sequence"):
        run_programs("print(1)")


# --- ordinary programs -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layer", LAYERS)
def test_exit_codes_output_and_tracebacks(layer: str, tmp_root: Path) -> None:
    ok = _run("import sys\nprint('héllo')\nprint('err', file=sys.stderr)\n", layer, tmp_root)
    assert (ok.passed, ok.reason, ok.returncode, ok.stdout, ok.stderr) == (True, "passed", 0, "héllo\n", "err\n")
    assert 0 < ok.seconds < LIMITS.timeout_s

    code3 = _run("raise SystemExit(3)", layer, tmp_root)
    assert (code3.passed, code3.reason, code3.returncode) == (False, "failed", 3)

    broken = _run("def f(x):\n    return x + 1\n\nassert f(1) == 3, 'wrong'\n", layer, tmp_root)
    assert (broken.passed, broken.reason, broken.returncode) == (False, "failed", 1)
    # The traceback starts at the program's own frames, as a plain `python main.py` would print it.
    assert broken.stderr.startswith("Traceback (most recent call last):\n  File ")
    assert "main.py\", line 4, in <module>" in broken.stderr
    assert broken.stderr.rstrip().endswith("AssertionError: wrong")
    assert ".boot.py" not in broken.stderr


@pytest.mark.parametrize("layer", LAYERS)
def test_environment_is_minimal_and_the_directory_is_private(layer: str, tmp_root: Path) -> None:
    code = (
        "import json, os, sys\n"
        "open('scratch.txt', 'w').write('x' * 10)\n"  # its own directory is writable
        "print(json.dumps({'env': dict(os.environ), 'cwd': os.getcwd(), 'stdin': sys.stdin.read(),\n"
        "                  'flags': [sys.flags.isolated, sys.flags.dont_write_bytecode]}))\n"
    )
    result = _run(code, layer, tmp_root)
    assert result.passed, result.stderr
    import json

    seen = json.loads(result.stdout)
    assert set(seen["env"]) <= {"PATH", "HOME", "TMPDIR", "LANG", "LC_ALL", "PYTHONDONTWRITEBYTECODE",
                                "PYTHONHASHSEED", "PYTHONIOENCODING"}
    assert seen["env"]["HOME"] == seen["cwd"] == seen["env"]["TMPDIR"]
    assert Path(seen["cwd"]).parent == tmp_root
    assert seen["stdin"] == ""  # stdin is closed (/dev/null)
    assert seen["flags"] == [1, 1]


def test_run_programs_keeps_order_and_matches_run_program(tmp_root: Path) -> None:
    codes = [f"import time\ntime.sleep({0.2 if i % 2 == 0 else 0.0})\nprint({i})\nraise SystemExit({i % 3})"
             for i in range(6)]
    results = run_programs(codes, limits=LIMITS, workers=2, tmp_root=str(tmp_root))
    assert [r.stdout for r in results] == [f"{i}\n" for i in range(6)]
    assert [r.returncode for r in results] == [i % 3 for i in range(6)]
    assert [r.passed for r in results] == [i % 3 == 0 for i in range(6)]
    single = run_program(codes[1], limits=LIMITS, tmp_root=str(tmp_root))
    assert (single.stdout, single.reason) == (results[1].stdout, results[1].reason)
    assert run_programs([], limits=LIMITS) == []
    assert list(tmp_root.iterdir()) == []


# --- hostile programs --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layer", LAYERS)
def test_infinite_loop_times_out(layer: str, tmp_root: Path) -> None:
    start = time.monotonic()
    result = _run("while True:\n    pass\n", layer, tmp_root)
    assert (result.passed, result.reason) == (False, "timeout")
    assert LIMITS.timeout_s <= result.seconds < LIMITS.timeout_s + 1.0
    assert time.monotonic() - start < LIMITS.timeout_s + 3.0


@pytest.mark.parametrize("layer", LAYERS)
def test_cpu_limit(layer: str, tmp_root: Path) -> None:
    limits = SandboxLimits(timeout_s=10.0, cpu_s=1, memory_mb=256, output_bytes=64 * 1024)
    result = _run("while True:\n    pass\n", layer, tmp_root, limits)
    assert (result.passed, result.reason) == (False, "cpu")
    assert result.seconds < 5.0


@pytest.mark.parametrize("layer", LAYERS)
def test_fork_bomb_is_contained(layer: str, tmp_root: Path) -> None:
    bomb = (
        "import os, time\n"
        "while True:\n"
        "    try:\n"
        "        os.fork()\n"
        "    except OSError:\n"
        "        time.sleep(0.01)\n"
    )
    result = _run(bomb, layer, tmp_root)  # _run checks that no process of it survives
    assert not result.passed
    assert result.reason == "timeout"
    # The host can still start processes.
    assert subprocess.run([sys.executable, "-c", "pass"], timeout=30).returncode == 0


@pytest.mark.parametrize("layer", LAYERS)
def test_process_count_is_bounded(layer: str, tmp_root: Path) -> None:
    code = (
        "import os, sys, time\n"
        "n = 0\n"
        "for _ in range(200):\n"
        "    try:\n"
        "        pid = os.fork()\n"
        "    except OSError:\n"
        "        break\n"
        "    if pid == 0:\n"
        "        time.sleep(30)\n"
        "        os._exit(0)\n"
        "    n += 1\n"
        "print(n)\n"
    )
    result = _run(code, layer, tmp_root)
    if layer == "basic":
        # The fallback refuses to start processes at all (an exec'd program would escape the audit hook).
        assert (result.reason, result.stdout) == ("passed", "0\n")
    else:
        assert result.passed, result.stderr
        assert 0 < int(result.stdout) < LIMITS.max_procs  # RLIMIT_NPROC applies (the program is not root)


@pytest.mark.parametrize("layer", LAYERS)
def test_daemonised_child_does_not_survive(layer: str, tmp_root: Path) -> None:
    code = (
        "import os, time\n"
        "try:\n"
        "    if os.fork() == 0:\n"
        "        os.setsid()\n"
        "        time.sleep(60)\n"
        "        os._exit(0)\n"
        "except OSError as exc:\n"
        "    print('refused', exc)\n"
        "print('parent done')\n"
    )
    result = _run(code, layer, tmp_root)  # _run checks that the sleeping child is gone
    assert result.stdout.endswith("parent done\n")


@pytest.mark.parametrize("layer", LAYERS)
def test_huge_allocation_is_reported_as_memory(layer: str, tmp_root: Path) -> None:
    result = _run("x = bytearray(10 * 1024 ** 3)\nprint('allocated')\n", layer, tmp_root)
    assert (result.passed, result.reason, result.stdout) == (False, "memory", "")
    assert result.stderr.rstrip().endswith("MemoryError")


@pytest.mark.parametrize("layer", LAYERS)
def test_gigabyte_to_stdout_hits_the_output_limit(layer: str, tmp_root: Path) -> None:
    code = "import sys\nchunk = 'x' * (1 << 20)\nfor _ in range(1024):\n    sys.stdout.write(chunk)\n"
    result = _run(code, layer, tmp_root)
    assert (result.passed, result.reason) == (False, "output_limit")
    assert len(result.stdout) == LIMITS.output_bytes
    assert set(result.stdout) == {"x"}
    assert result.seconds < LIMITS.timeout_s  # killed at the cap, not at the timeout

    flood = _run("import sys\nwhile True:\n    sys.stderr.write('e' * 4096)\n", layer, tmp_root)
    assert (flood.reason, len(flood.stderr)) == ("output_limit", LIMITS.output_bytes)


@pytest.mark.parametrize("layer", LAYERS)
def test_file_size_limit(layer: str, tmp_root: Path) -> None:
    code = "with open('big.bin', 'wb') as fh:\n    fh.write(b'0' * (2 << 20))\n"
    result = _run(code, layer, tmp_root)
    assert (result.passed, result.reason) == (False, "failed")
    assert "File too large" in result.stderr


@pytest.mark.parametrize("layer", LAYERS)
def test_write_outside_its_directory_is_contained(layer: str, tmp_root: Path) -> None:
    # The worst case: a host folder that anyone may write to.
    target_dir = Path(tempfile.mkdtemp(prefix="equal-sandbox-target-"))
    try:
        target_dir.chmod(0o777)
        targets = [target_dir / "open.txt", target_dir / "osopen.txt", target_dir / "shell.txt"]
        code = (
            "import os, sys\n"
            "done = []\n"
            f"for attempt in ('open', 'os.open', 'shell', 'rename', 'mkdir'):\n"
            "    try:\n"
            "        if attempt == 'open':\n"
            f"            open({str(targets[0])!r}, 'w').write('pwned')\n"
            "        elif attempt == 'os.open':\n"
            f"            os.close(os.open({str(targets[1])!r}, os.O_CREAT | os.O_WRONLY))\n"
            "        elif attempt == 'shell':\n"
            f"            os.system('echo pwned > {targets[2]}')\n"
            "        elif attempt == 'rename':\n"
            "            open('mine.txt', 'w').write('x')\n"
            f"            os.rename('mine.txt', {str(target_dir / 'moved.txt')!r})\n"
            "        else:\n"
            f"            os.mkdir({str(target_dir / 'made')!r})\n"
            "        done.append(attempt)\n"
            "    except OSError as exc:\n"
            "        print(attempt, 'refused:', exc)\n"
            "sys.exit(0 if done and all(os.path.exists(p) for p in ("
            f"{str(targets[0])!r},)) else 1)\n"
        )
        result = _run(code, layer, tmp_root)
        assert not result.passed
        assert result.reason == "failed"
        assert list(target_dir.iterdir()) == []  # the host sees nothing
        assert "open refused:" in result.stdout
    finally:
        shutil.rmtree(target_dir, ignore_errors=True)


@pytest.fixture
def listener() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A TCP listener and a UDP socket on 127.0.0.1 of the host, both on the same port number."""
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(8)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", tcp.getsockname()[1]))
    yield tcp, udp
    tcp.close()
    udp.close()


@pytest.mark.parametrize("layer", LAYERS)
def test_no_network(layer: str, tmp_root: Path, listener: tuple[socket.socket, socket.socket]) -> None:
    tcp, udp = listener
    port = tcp.getsockname()[1]
    code = (
        "import socket, struct, sys\n"
        "reached = []\n"
        "try:\n"
        f"    socket.create_connection(('127.0.0.1', {port}), timeout=1).sendall(b'hello')\n"
        "    reached.append('tcp')\n"
        "except OSError as exc:\n"
        "    print('tcp refused:', exc)\n"
        "try:\n"
        f"    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'hello', ('127.0.0.1', {port}))\n"
        "    reached.append('udp')\n"
        "except OSError as exc:\n"
        "    print('udp refused:', exc)\n"
        "try:\n"
        "    import ctypes\n"  # straight to libc, past any Python-level check
        "    libc = ctypes.CDLL(None, use_errno=True)\n"
        "    fd = libc.socket(socket.AF_INET, socket.SOCK_STREAM, 0)\n"
        f"    addr = struct.pack('=HH4s8x', socket.AF_INET, socket.htons({port}), socket.inet_aton('127.0.0.1'))\n"
        "    if libc.connect(fd, addr, len(addr)) == 0:\n"
        "        reached.append('ctypes')\n"
        "    else:\n"
        "        print('ctypes connect failed: errno', ctypes.get_errno())\n"
        "except OSError as exc:\n"
        "    print('ctypes refused:', exc)\n"
        "sys.exit(0 if reached else 1)\n"
    )
    result = _run(code, layer, tmp_root)
    assert (result.passed, result.reason) == (False, "failed"), result.stdout + result.stderr
    assert "tcp refused:" in result.stdout and "udp refused:" in result.stdout
    if layer == "namespace":
        # Even past the audit hook, the kernel has no route out of the new network namespace.
        assert "ctypes connect failed: errno 101" in result.stdout  # ENETUNREACH
    else:
        assert "ctypes refused: sandbox: ctypes" in result.stdout
    tcp.settimeout(0.2)
    with pytest.raises(TimeoutError):
        tcp.accept()  # the listener sees nothing
    udp.settimeout(0.2)
    with pytest.raises(TimeoutError):
        udp.recvfrom(16)


@pytest.mark.parametrize("layer", LAYERS)
def test_api_keys_are_out_of_reach(layer: str, tmp_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secrets = {"EQUAL_API_KEY": "sk-equal-9f3a7c", "OPENAI_API_KEY": "sk-openai-2b8e1d"}
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    code = (
        "import os, sys\n"
        "found = [os.environ.get('EQUAL_API_KEY'), os.environ.get('OPENAI_API_KEY')]\n"
        "for entry in os.listdir('/proc'):\n"  # every process's environment, the parent's included
        "    if entry.isdigit():\n"
        "        try:\n"
        "            data = open(f'/proc/{entry}/environ', 'rb').read()\n"
        "        except OSError:\n"
        "            continue\n"
        "        if b'sk-' in data:\n"
        "            found.append(data.decode(errors='replace'))\n"
        "found = [f for f in found if f]\n"
        "print(found)\n"
        "sys.exit(0 if found else 1)\n"
    )
    result = _run(code, layer, tmp_root)
    assert (result.passed, result.reason, result.stdout) == (False, "failed", "[]\n")
    for value in secrets.values():
        assert value not in result.stdout + result.stderr


@pytest.mark.parametrize("layer", LAYERS)
def test_credential_files_in_the_callers_home_are_hidden(layer: str, tmp_root: Path) -> None:
    home = Path(os.path.realpath(Path.home()))
    if str(home) in ("/", "") or not home.is_dir() or not os.access(home, os.W_OK) or tmp_root.is_relative_to(home):
        pytest.skip("no private home directory to hide here")
    fd, name = tempfile.mkstemp(prefix=".equal-sandbox-test-credentials-", dir=home)
    try:
        os.write(fd, b"token=sk-home-5c4d3e")
        os.close(fd)
        code = (
            "import os, sys\n"
            "found = []\n"
            "try:\n"
            f"    found.append(open({name!r}).read())\n"
            "except OSError as exc:\n"
            "    print('read refused:', type(exc).__name__)\n"
            "try:\n"
            f"    found.append(str(os.listdir({str(home)!r})))\n"
            "except OSError as exc:\n"
            "    print('list refused:', type(exc).__name__)\n"
            "sys.exit(0 if found else 1)\n"
        )
        result = _run(code, layer, tmp_root)
        assert "sk-home-5c4d3e" not in result.stdout + result.stderr
        assert Path(name).name not in result.stdout + result.stderr
        assert "read refused:" in result.stdout
    finally:
        Path(name).unlink(missing_ok=True)
