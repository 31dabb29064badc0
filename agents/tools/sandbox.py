"""Run untrusted Python in a bubblewrap sandbox: its own user, PID, network, IPC, UTS and cgroup
namespaces; a read-only system (/usr only); a private size-limited scratch tmpfs as the only
writable place; a cleared environment; no relaybus file, credential or home in view; limits on
wall time, CPU, memory, processes, open files and output. Files go in and out as data.

`Sandbox.run` blocks (run it in a thread). When bubblewrap is missing or cannot create
namespaces on this host, it raises SandboxUnavailable: code never runs unsandboxed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relaybus.bus import ConfigError

from ..settings import CodeSettings

BOOT = Path(__file__).with_name("sandbox_boot.py")
SANDBOX_UID = 1000  # the uid the code sees inside (mapped to the host uid running bwrap)
WALL_GRACE_S = 5.0  # the host ends the sandbox this long after the in-sandbox deadline
OPEN_FILES = 64
INSTALL_HINT = (
    "install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap; Fedora: dnf install "
    "bubblewrap) and allow unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone"
    "=1, user.max_user_namespaces > 0), or set RELAYBUS_CODE_BWRAP to its path; relaybus never "
    "runs code without the sandbox"
)


class SandboxUnavailable(ConfigError):
    """The sandbox cannot run on this host (bubblewrap missing or refused); nothing ran."""

    def __init__(self, message: str, *, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason

    def details(self) -> dict[str, str | int | float | bool]:
        return {"reason": self.reason}


@dataclass(frozen=True)
class Limits:
    cpu_seconds: float
    wall_seconds: float
    memory_mb: int
    processes: int
    output_bytes: int
    scratch_mb: int

    def job(self) -> dict[str, Any]:
        return {
            "cpu_seconds": max(1, round(self.cpu_seconds)),
            "wall_seconds": self.wall_seconds,
            "memory_bytes": self.memory_mb << 20,
            "processes": self.processes,
            "open_files": OPEN_FILES,
            "file_bytes": self.scratch_mb << 20,
            "output_bytes": self.output_bytes,
            "files_out_bytes": self.output_bytes,
        }


@dataclass(frozen=True)
class SandboxReport:
    """What a run did, as the tool returns it (journaled; a replay returns this again)."""

    exit_code: int
    killed: str  # "" | "wall_time" | "cpu_time" | "memory" | "files" | "output" | "sandbox"
    stdout: str
    stderr: str
    stdout_truncated: bool
    stderr_truncated: bool
    files: dict[str, str]
    files_skipped: dict[str, str]
    cpu_seconds: float  # the code and every process it started (the sandbox reaps them all)
    wall_seconds: float

    def as_result(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


class Sandbox:
    """One host's bubblewrap sandbox, configured from RELAYBUS_CODE_*."""

    def __init__(self, settings: CodeSettings) -> None:
        self.settings = settings
        self._checked = False
        self._lock = threading.Lock()

    @property
    def python(self) -> str:
        if self.settings.code_python:
            return self.settings.code_python
        if Path("/usr/bin/python3").exists():
            return "/usr/bin/python3"
        return os.path.realpath(getattr(sys, "_base_executable", sys.executable))

    def bwrap(self) -> str:
        found = shutil.which(self.settings.code_bwrap)
        if found is None:
            raise SandboxUnavailable(
                f"the code interpreter needs bubblewrap: {self.settings.code_bwrap!r} was not "
                f"found; {INSTALL_HINT}",
                reason="bwrap missing",
            )
        return found

    def check(self) -> None:
        """Refuse (SandboxUnavailable) unless a trivial program runs in the sandbox here."""
        with self._lock:
            if self._checked:
                return
            limits = Limits(5, 10, 256, 8, 4096, 1)
            report, problem = self._run("print('ok')", {}, limits)
            if problem or report is None or report.stdout.strip() != "ok":
                detail = problem or (report.stderr.strip() if report else "")
                raise SandboxUnavailable(
                    f"the code sandbox does not work on this host ({detail[-400:]}); "
                    f"{INSTALL_HINT}",
                    reason=detail[-200:],
                )
            self._checked = True

    def run(self, code: str, files: dict[str, str], limits: Limits) -> SandboxReport:
        """Run `code`; the report of what it did. Once the sandbox works on this host, a run
        that ends without a valid report (the code broke its supervisor) is reported as
        `killed: "sandbox"` and charged its whole CPU limit, never raised."""
        self.check()
        started = time.monotonic()
        report, problem = self._run(code, files, limits)
        if report is None:
            wall = round(time.monotonic() - started, 3)
            lost = _ended("sandbox", _cpu(None, limits), wall)
            return dataclasses.replace(
                lost, stderr=f"the sandbox ended without a report: {problem}"[:4000]
            )
        return report

    # -- the host side of one run -------------------------------------------------------------

    def _argv(self, limits: Limits) -> list[str]:
        python = self.python
        argv = [
            self.bwrap(),
            "--unshare-all", "--unshare-user", "--disable-userns",
            "--die-with-parent", "--new-session", "--cap-drop", "ALL", "--as-pid-1",
            "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID), "--hostname", "sandbox",
            "--ro-bind", "/usr", "/usr",
        ]  # fmt: skip
        for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64"):
            if os.path.islink(top):
                argv += ["--symlink", os.readlink(top), top]
            elif os.path.isdir(top):
                argv += ["--ro-bind", top, top]
        tree = interpreter_tree(python)
        if tree is not None:  # an interpreter installed outside /usr: its own tree, read-only
            argv += ["--ro-bind", tree, tree]
        argv += ["--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache"]
        argv += [
            "--proc", "/proc", "--dev", "/dev", "--remount-ro", "/dev",
            "--size", str(limits.scratch_mb << 20), "--tmpfs", "/work",
            "--remount-ro", "/", "--chdir", "/work", "--clearenv",
            "--", python, "-I", "-S", "-c", BOOT.read_text(),
        ]  # fmt: skip
        return argv

    def _run(
        self, code: str, files: dict[str, str], limits: Limits
    ) -> tuple[SandboxReport | None, str]:
        nonce = secrets.token_hex(16)  # a report without it is not the sandbox's own
        job = json.dumps(
            {"code": code, "files": files, "limits": limits.job(), "nonce": nonce}
        ).encode()
        as_root = os.geteuid() == 0
        drop: dict[str, Any] = {}
        if as_root:  # root is exempt from process limits: the sandbox runs as an unprivileged uid
            uid = self.settings.code_uid
            drop = {"user": uid, "group": uid, "extra_groups": []}
        started = time.monotonic()
        try:
            proc = subprocess.Popen(
                self._argv(limits),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env={"PATH": "/usr/bin:/bin"},  # nothing of this process's environment inside
                cwd="/",
                close_fds=True,
                start_new_session=True,
                **drop,
            )
        except OSError as exc:
            return None, f"cannot start {self.settings.code_bwrap}: {exc}"
        writer = threading.Thread(target=_feed, args=(proc, job), daemon=True)
        writer.start()
        out, err, timed_out = _drain(proc, limits, started + limits.wall_seconds + WALL_GRACE_S)
        if timed_out:
            _kill_group(proc.pid)
        proc.wait()
        writer.join(timeout=1)
        wall = round(time.monotonic() - started, 3)
        try:
            found = json.loads(out)
        except ValueError:
            found = None
        if not isinstance(found, dict) or found.get("nonce") != nonce or "error" in found:
            if timed_out:  # ended from outside: charged as if it used all its CPU time
                return _ended("wall_time", _cpu(None, limits), wall), ""
            if isinstance(found, dict) and found.get("nonce") == nonce:
                return None, str(found["error"])[:400]
            return None, err.decode("utf-8", "replace").strip() or f"exit {proc.returncode}"
        cap = limits.output_bytes
        return (
            SandboxReport(
                exit_code=int(found.get("exit_code", -1)),
                killed=str(found.get("killed", "")),
                stdout=str(found.get("stdout", ""))[:cap],
                stderr=str(found.get("stderr", ""))[:cap],
                stdout_truncated=int(found.get("stdout_bytes", 0)) > cap,
                stderr_truncated=int(found.get("stderr_bytes", 0)) > cap,
                files=_strings(found.get("files"), cap),
                files_skipped=_strings(found.get("files_skipped"), cap),
                cpu_seconds=_cpu(found.get("cpu_seconds"), limits),
                wall_seconds=wall,
            ),
            "",
        )


def _feed(proc: subprocess.Popen[bytes], job: bytes) -> None:
    assert proc.stdin is not None
    try:
        proc.stdin.write(job)
        proc.stdin.close()
    except OSError:
        pass  # the sandbox ended before it read the job: its stderr says why


def _drain(
    proc: subprocess.Popen[bytes], limits: Limits, deadline: float
) -> tuple[bytes, bytes, bool]:
    """The report (stdout) and bwrap's own errors (stderr), each read up to a bound; True when
    the sandbox outlived `deadline`."""
    # stdout, stderr and files out, each up to output_bytes, each byte at most 6 once escaped
    bound = {"out": limits.output_bytes * 3 * 6 + (1 << 20), "err": 64 * 1024}
    buffers = {"out": bytearray(), "err": bytearray()}
    sel = selectors.DefaultSelector()
    assert proc.stdout is not None and proc.stderr is not None
    sel.register(proc.stdout, selectors.EVENT_READ, "out")
    sel.register(proc.stderr, selectors.EVENT_READ, "err")
    try:
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                return bytes(buffers["out"]), bytes(buffers["err"]), True
            for key, _ in sel.select(timeout=min(left, 0.5)):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                buf = buffers[key.data]
                if len(buf) < bound[key.data]:
                    buf += chunk[: bound[key.data] - len(buf)]
    finally:
        sel.close()
        proc.stdout.close()
        proc.stderr.close()
    return bytes(buffers["out"]), bytes(buffers["err"]), False


def interpreter_tree(python: str) -> str | None:
    """The directory tree an interpreter outside /usr needs bound (None: under /usr already);
    SandboxUnavailable for one whose tree would expose the host's root or a top directory."""
    resolved = Path(python).resolve()
    if resolved.parts[:2] == ("/", "usr"):
        return None
    tree = resolved.parent.parent
    if len(tree.parts) < 3:  # `/`, `/opt`, `/root`: far more than an interpreter
        raise SandboxUnavailable(
            f"RELAYBUS_CODE_PYTHON={python} resolves to {resolved}, whose tree {tree} is too wide "
            "to show the sandbox; use an interpreter under /usr or in a directory of its own "
            "(e.g. /opt/python3.11/bin/python3)",
            reason="interpreter tree too wide",
        )
    return str(tree)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _ended(killed: str, cpu: float, wall: float) -> SandboxReport:
    return SandboxReport(-9, killed, "", "", False, False, {}, {}, cpu, wall)


def _cpu(value: Any, limits: Limits) -> float:
    """The CPU time the sandbox reported, within what its limit allows (the hard limit is one
    second over the soft one); all of it when the report is unreadable."""
    most = float(limits.job()["cpu_seconds"]) + 1.0
    if not isinstance(value, int | float) or not 0 <= value <= most:
        return most
    return round(float(value), 3)


def _strings(value: Any, cap: int) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    return {str(k)[:256]: str(v)[:cap] for k, v in list(value.items())[:1000]}
