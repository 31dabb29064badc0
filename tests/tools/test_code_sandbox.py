"""The code interpreter's sandbox against hostile programs: each one is contained, reported, and
leaves this process (the host) healthy. Real bubblewrap, real processes, nothing mocked."""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import msgspec
import pytest

from relaybus.agents.settings import CodeSettings
from relaybus.agents.tools.code import Code, limits_for
from relaybus.agents.tools.sandbox import Limits, Sandbox, SandboxUnavailable

pytestmark = pytest.mark.skipif(
    shutil.which("bwrap") is None and not os.environ.get("TEST_NEEDS_BWRAP"),
    reason="needs bubblewrap (apt-get install bubblewrap); CI sets TEST_NEEDS_BWRAP",
)

LIMITS = Limits(
    cpu_seconds=2, wall_seconds=4, memory_mb=256, processes=16, output_bytes=8192, scratch_mb=8
)
SECRET = "rb-secret-" + os.urandom(8).hex()


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    return Sandbox(CodeSettings())


def processes_with(token: str) -> list[int]:
    """Host processes whose command line holds `token` (the sandbox shares the host's kernel:
    a process that escaped its run would be listed here)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if token in (entry / "cmdline").read_text(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_a_program_runs_with_its_files_and_returns_what_it_wrote(sandbox: Sandbox) -> None:
    code = (
        "import csv, json\n"
        "rows = list(csv.DictReader(open('data/prices.csv')))\n"
        "avg = sum(float(r['price']) for r in rows) / len(rows)\n"
        "open('out/summary.json', 'w').write(json.dumps({'avg': avg}))\n"
        "print(f'{avg:.2f}')\n"
    )
    files = {"data/prices.csv": "product,price\na,49\nb,39\nc,59\n", "out/.keep": ""}
    report = sandbox.run(code, files, LIMITS)
    assert report.exit_code == 0 and report.killed == "", report.stderr
    assert report.stdout == "49.00\n"
    assert report.files == {"out/summary.json": '{"avg": 49.0}'}  # inputs unchanged: not returned
    assert 0 < report.cpu_seconds < LIMITS.cpu_seconds


def test_an_infinite_loop_is_stopped_at_its_cpu_limit(sandbox: Sandbox) -> None:
    # wall time well above the CPU limit: on a loaded machine (CI runs four workers on two
    # CPUs) two CPU seconds can take more than four wall seconds to burn
    limits = dataclasses.replace(LIMITS, wall_seconds=30)
    started = time.monotonic()
    report = sandbox.run("while True:\n    pass\n", {}, limits)
    assert report.killed == "cpu_time" and report.exit_code != 0
    # (the last polls before the kill may miss a few hundred ms of a loaded machine's CPU time)
    assert limits.cpu_seconds - 0.5 <= report.cpu_seconds <= limits.cpu_seconds + 1.1
    assert time.monotonic() - started < limits.wall_seconds


def test_a_program_that_sleeps_is_stopped_at_its_wall_time(sandbox: Sandbox) -> None:
    report = sandbox.run("import time\nprint('start', flush=True)\ntime.sleep(600)\n", {}, LIMITS)
    assert report.killed == "wall_time" and report.stdout == "start\n"
    assert LIMITS.wall_seconds <= report.wall_seconds < LIMITS.wall_seconds + 5


def test_a_fork_bomb_hits_the_process_limit_and_leaves_nothing_behind(sandbox: Sandbox) -> None:
    token = "forkbomb-" + os.urandom(6).hex()
    code = (
        "import os, sys, time\n"
        "n = 0\n"
        "try:\n"
        "    while n < 10000:\n"
        "        if os.fork() == 0:\n"
        "            os.setsid()\n"  # a new session: out of the program's process group
        f"            os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(600)', {token!r}])\n"
        "        n += 1\n"
        "except OSError as exc:\n"
        "    print('stopped after', n, exc.errno)\n"
    )
    limits = dataclasses.replace(LIMITS, wall_seconds=20)  # forking is slow on a loaded machine
    report = sandbox.run(code, {}, limits)
    assert report.stdout.startswith("stopped after"), (report.stdout, report.stderr)
    assert int(report.stdout.split()[2]) < limits.processes
    assert report.stdout.split()[3] == "11"  # EAGAIN
    assert report.wall_seconds < limits.wall_seconds + 5
    # the children sleep for 600 s in sessions of their own: they ended with the run
    deadline = time.monotonic() + 5
    while processes_with(token) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes_with(token) == []


def test_a_memory_bomb_fails_inside_the_sandbox(sandbox: Sandbox) -> None:
    code = "chunks = []\nwhile True:\n    chunks.append(bytearray(16 << 20))\n"
    report = sandbox.run(code, {}, LIMITS)
    assert report.exit_code == 1 and "MemoryError" in report.stderr
    # and a program just under the limit still gets its memory
    fits = sandbox.run("x = bytearray(100 << 20)\nprint(len(x))\n", {}, LIMITS)
    assert fits.stdout == f"{100 << 20}\n"


def test_huge_output_is_cut_and_reported(sandbox: Sandbox) -> None:
    report = sandbox.run("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n", {}, LIMITS)
    assert report.killed == "output" and report.stdout_truncated
    assert len(report.stdout) == LIMITS.output_bytes
    big_file = sandbox.run("open('big.txt', 'w').write('y' * (1 << 20))\n", {}, LIMITS)
    assert big_file.files == {} and "over the output limit" in big_file.files_skipped["big.txt"]
    disk = sandbox.run("open('fill', 'wb').write(b'z' * (64 << 20))\n", {}, LIMITS)
    assert disk.exit_code != 0  # the scratch directory is 8 MB: no space (or file too large)


def test_the_hosts_services_are_out_of_reach(sandbox: Sandbox) -> None:
    accepted: list[object] = []
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        server.settimeout(0.2)

        def accept() -> None:
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                try:
                    accepted.append(server.accept())
                except TimeoutError:
                    continue

        waiter = threading.Thread(target=accept)
        waiter.start()
        code = (
            "import socket\n"
            f"for target in [('127.0.0.1', {port}), ('10.0.2.2', 80), ('8.8.8.8', 53)]:\n"
            "    try:\n"
            "        socket.create_connection(target, timeout=1)\n"
            "        print('connected', target)\n"
            "    except OSError as exc:\n"
            "        print('refused', exc.errno)\n"
            "print(open('/proc/net/dev').read().count(':'))\n"  # its own namespace: loopback only
        )
        report = sandbox.run(code, {}, LIMITS)
        waiter.join()
    assert "connected" not in report.stdout, report.stdout
    assert report.stdout.count("refused") == 3
    assert report.stdout.splitlines()[-1] == "1"
    assert accepted == []


def test_credentials_home_and_environment_are_not_visible(
    sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = tmp_path / ".relaybus" / "keys"
    keys.mkdir(parents=True)
    (keys / "coder.seed").write_text(SECRET)
    monkeypatch.setenv("RELAYBUS_NATS_PASSWORD", SECRET)
    code = (
        "import os, glob\n"
        "seen = [repr(dict(os.environ))]\n"
        "for path in ['/proc/1/environ'] + glob.glob('/proc/*/environ') + glob.glob('/proc/*/cmdline'):\n"
        "    try:\n"
        "        seen.append(open(path, 'rb').read().decode(errors='replace'))\n"
        "    except OSError:\n"
        "        pass\n"
        "for path in [{!r}, {!r}, '/root', '/home', '/etc/passwd', '/etc/shadow', '/work/main']:\n"
        "    try:\n"
        "        seen.append(open(path).read() if os.path.isfile(path) else str(os.listdir(path)))\n"
        "    except OSError as exc:\n"
        "        seen.append('refused ' + path)\n"
        "print('\\n'.join(seen))\n"
        "print(sorted(os.listdir('/')))\n"
    ).format(str(keys / "coder.seed"), str(tmp_path))
    report = sandbox.run(code, {}, dataclasses.replace(LIMITS, output_bytes=1 << 20))
    assert not report.stdout_truncated
    assert report.exit_code == 0, report.stderr
    assert SECRET not in report.stdout and "RELAYBUS" not in report.stdout
    assert report.stdout.count("refused ") == 7
    visible = set(eval(report.stdout.splitlines()[-1]))  # the sandbox's own root directory
    system = {"bin", "sbin", "lib", "lib32", "lib64", "usr", "etc"}
    assert {"work", "proc", "dev"} <= visible <= system | {"work", "proc", "dev"}


def test_nothing_outside_the_scratch_directory_can_be_written(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    before = sorted(p.name for p in tmp_path.iterdir())
    code = (
        "import os\n"
        "for path in ['/usr/evil', '/etc/evil', '/evil', '/proc/evil', {!r}, '/tmp/evil']:\n"
        "    try:\n"
        "        open(path, 'w').write('x')\n"
        "        print('wrote', path)\n"
        "    except OSError as exc:\n"
        "        print('refused', path)\n"
    ).format(str(tmp_path / "evil"))
    report = sandbox.run(code, {}, LIMITS)
    assert "wrote" not in report.stdout, report.stdout
    assert report.stdout.count("refused") == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert not Path("/usr/evil").exists() and not Path("/evil").exists()


def test_symlinks_do_not_carry_files_out(sandbox: Sandbox) -> None:
    code = (
        "import os\n"
        "os.symlink('/proc/self/environ', 'env')\n"
        "os.symlink('/etc/passwd', 'passwd')\n"
        "os.symlink('/usr', 'usr_dir')\n"
        "open('real.txt', 'w').write('ok')\n"
    )
    report = sandbox.run(code, {}, LIMITS)
    assert report.files == {"real.txt": "ok"}
    assert set(report.files_skipped) == {"env", "passwd", "usr_dir"}


@pytest.mark.parametrize(
    "name", ["../escape", "/etc/passwd", "a/../../b", ".hidden", "a//b", "x\x00y", "a/" * 9 + "b"]
)
def test_file_names_that_could_escape_are_refused_before_anything_runs(name: str) -> None:
    with pytest.raises(ValueError, match=r"must be a relative path|at most"):
        Code.model_validate({"code": "print(1)", "files": {name: "x"}})
    with pytest.raises(ValueError, match="both a file and a folder"):
        Code.model_validate({"code": "print(1)", "files": {"a": "x", "a/b": "y"}})


def test_the_code_cannot_forge_the_report_or_break_its_supervisor(sandbox: Sandbox) -> None:
    """The supervisor is the sandbox's PID 1 and not dumpable: the code can neither take its
    report pipe (pidfd_getfd) nor kill it; the report carries what really happened."""
    code = (
        "import ctypes, json, os, signal, time\n"
        "end = time.process_time() + 0.5\n"
        "while time.process_time() < end:\n"
        "    pass\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "pidfd = libc.syscall(434, 1, 0)\n"  # pidfd_open(1)
        "fd = libc.syscall(438, pidfd, 1, 0)\n"  # pidfd_getfd: the supervisor's stdout
        "if fd >= 0:\n"
        "    os.write(fd, json.dumps({'exit_code': 0, 'cpu_seconds': 0.0, 'stdout': 'forged'}).encode())\n"
        "print('getfd', fd, ctypes.get_errno())\n"
        "for pid in (1, os.getppid()):\n"
        "    try:\n"
        "        os.kill(pid, signal.SIGKILL)\n"
        "    except OSError as exc:\n"
        "        print('kill', pid, exc.errno)\n"
        "time.sleep(0.2)\n"
        "print('still here')\n"
    )
    report = sandbox.run(code, {}, LIMITS)
    assert report.stdout.startswith("getfd -1 "), report.stdout
    assert "forged" not in report.stdout and report.stdout.endswith("still here\n")
    assert report.cpu_seconds >= 0.5  # charged for what it used


def test_cpu_and_memory_are_limited_across_all_its_processes(sandbox: Sandbox) -> None:
    spin = (
        "import os, time\n"
        "for _ in range(3):\n"
        "    if os.fork() == 0:\n"
        "        break\n"
        "end = time.process_time() + 1.8\n"  # 4 x 1.8 s, each under the 2 s limit
        "while time.process_time() < end:\n"
        "    pass\n"
    )
    # wall time well above the CPU limit: four busy processes on a loaded CI machine (four
    # test workers on two CPUs) can take more than four wall seconds to burn two CPU seconds
    cpu = sandbox.run(spin, {}, dataclasses.replace(LIMITS, wall_seconds=30))
    assert cpu.killed == "cpu_time", cpu
    assert LIMITS.cpu_seconds - 0.1 <= cpu.cpu_seconds <= LIMITS.cpu_seconds + 1
    grab = (
        "import os, time\n"
        "for _ in range(5):\n"
        "    if os.fork() == 0:\n"
        "        break\n"
        "block = bytearray(150 << 20)\n"  # 6 x 150 MB resident, each under 256 MB
        "for i in range(0, len(block), 4096):\n"
        "    block[i] = 1\n"
        "time.sleep(3)\n"
    )
    memory = sandbox.run(grab, {}, LIMITS)
    assert memory.killed == "memory", memory
    shared = sandbox.run("open('/dev/shm/x', 'wb').write(b'x' * (64 << 20))\n", {}, LIMITS)
    assert "Read-only file system" in shared.stderr or "No such file" in shared.stderr


def test_what_it_leaves_behind_is_bounded(sandbox: Sandbox) -> None:
    many = sandbox.run("for i in range(50000):\n    open(f'f{i}', 'w')\n", {}, LIMITS)
    assert many.killed == "files"
    assert len(many.files) + len(many.files_skipped) <= 1001
    deep = sandbox.run(
        "import os\nfor _ in range(1100):\n    os.mkdir('d')\n    os.chdir('d')\n", {}, LIMITS
    )
    assert deep.exit_code == 0 and "deeper than 32 directories" in str(deep.files_skipped)
    odd = sandbox.run(
        "import os\nopen(b'bad\\xff', 'w').write('hi')\nopen('locked', 'w')\nos.chmod('locked', 0)\n"
        "print('\\x01' * 9000)\n",
        {},
        LIMITS,
    )
    assert odd.files == {"bad\ufffd": "hi"} and "unreadable" in odd.files_skipped["locked"]
    assert odd.stdout_truncated and len(odd.stdout) == LIMITS.output_bytes
    msgspec.json.encode(odd.as_result())  # what the journal records: valid UTF-8 throughout


def test_limits_above_the_hosts_are_refused_by_name() -> None:
    from relaybus.agents.tools.code import CodeRefused

    settings = CodeSettings(code_max_cpu_seconds=10)
    with pytest.raises(CodeRefused, match=r"cpu_seconds=11 is over this host's limit 10"):
        limits_for(settings, Code(code="print(1)", cpu_seconds=11))


def test_without_bubblewrap_nothing_runs() -> None:
    missing = Sandbox(CodeSettings(code_bwrap="/nonexistent/bwrap"))
    with pytest.raises(SandboxUnavailable, match="install bubblewrap") as caught:
        missing.run("open('/tmp/relaybus-ran', 'w')", {}, LIMITS)
    assert caught.value.reason == "bwrap missing"
    assert not Path("/tmp/relaybus-ran").exists()
    broken = Sandbox(CodeSettings(code_python="/nonexistent/python/bin/python3"))
    with pytest.raises(SandboxUnavailable, match="does not work on this host"):
        broken.run("print(1)", {}, LIMITS)
    # an interpreter whose tree would show the host's root (or a top directory) is refused
    wide = Sandbox(CodeSettings(code_python="/opt/python3"))
    with pytest.raises(SandboxUnavailable, match="tree / is too wide"):
        wide.run("print(1)", {}, LIMITS)


def test_runs_at_the_same_time_see_nothing_of_each_other(sandbox: Sandbox) -> None:
    """Each run has its own scratch directory and PID namespace, though both run as the same
    host uid: one cannot read, list or signal the other."""
    marker = "other-run-" + os.urandom(6).hex()
    holder = (  # a file in its scratch directory, and a process with the marker in its argv
        "import os, sys\n"
        f"open('secret.txt', 'w').write({marker!r})\n"
        f"os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(2.5)', {marker!r}])\n"
    )
    prober = (
        "import glob, os, time\n"
        "time.sleep(0.8)\n"
        "seen = sorted(os.listdir('/work'))\n"
        "procs = [open(p, 'rb').read() for p in glob.glob('/proc/[0-9]*/cmdline')]\n"
        "print(seen, len(procs), any(b'other-run-' in p for p in procs))\n"
        "print([p for p in glob.glob('/proc/[0-9]*')])\n"
    )
    results: dict[str, object] = {}
    first = threading.Thread(target=lambda: results.update(a=sandbox.run(holder, {}, LIMITS)))
    first.start()
    results["b"] = sandbox.run(prober, {}, LIMITS)
    first.join()
    probe = results["b"]
    assert probe.exit_code == 0, probe.stderr  # type: ignore[attr-defined]
    assert probe.stdout.splitlines()[0].startswith("[] ")  # type: ignore[attr-defined]
    assert probe.stdout.splitlines()[0].endswith(" False")  # type: ignore[attr-defined]
    assert marker not in probe.stdout  # type: ignore[attr-defined]
    assert results["a"].files == {"secret.txt": marker}  # type: ignore[attr-defined]
