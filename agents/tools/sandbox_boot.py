"""Runs inside the sandbox (as `python -I -S -c <this file>`), never in an agent process.

Reads one JSON job on stdin (`code`, `files`, `limits`), writes the files into the scratch
directory, runs the code as a child under the job's resource limits, and writes one JSON report
on stdout: exit status, captured output (cut at the limit), the files the code left in the
scratch directory, and which limit (if any) ended it. Standard library only: nothing of relaybus
is visible in here.
"""

import ctypes
import json
import os
import resource
import selectors
import signal
import stat
import subprocess
import sys
import time

WORK = "/work"
PROGRAM = "/code/main.py"
PR_SET_DUMPABLE, PR_SET_CHILD_SUBREAPER = 4, 36
OUTPUT_DRAIN_FACTOR = 16  # output past limit x this ends the program (reported as "output")


def _prctl(option, value):
    try:
        ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def write_inputs(files):
    for name, text in files.items():
        path = os.path.join(WORK, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)


def child_limits(limits):
    def apply():
        cpu = int(limits["cpu_seconds"])
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        memory = int(limits["memory_bytes"])
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        resource.setrlimit(resource.RLIMIT_NPROC, (limits["processes"], limits["processes"]))
        resource.setrlimit(resource.RLIMIT_NOFILE, (limits["open_files"], limits["open_files"]))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits["file_bytes"], limits["file_bytes"]))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


def run(code, limits):
    with open(PROGRAM, "w", encoding="utf-8") as f:
        f.write(code)
    env = {"HOME": WORK, "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "TMPDIR": WORK}
    started = time.monotonic()
    child = subprocess.Popen(
        [sys.executable, "-I", PROGRAM],
        cwd=WORK,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=child_limits(limits),
        start_new_session=True,
    )
    keep = int(limits["output_bytes"])
    captured = {"stdout": bytearray(), "stderr": bytearray()}
    seen = {"stdout": 0, "stderr": 0}
    killed = ""
    deadline = started + float(limits["wall_seconds"])
    assert child.stdout is not None and child.stderr is not None
    sel = selectors.DefaultSelector()
    sel.register(child.stdout, selectors.EVENT_READ, "stdout")
    sel.register(child.stderr, selectors.EVENT_READ, "stderr")
    while sel.get_map():
        left = deadline - time.monotonic()
        if left <= 0:
            killed = "wall_time"
            break
        if child.poll() is not None:
            _kill_everything()  # background processes holding the pipes open end with it
        for key, _ in sel.select(timeout=min(left, 0.5)):
            chunk = os.read(key.fd, 65536)
            if not chunk:
                sel.unregister(key.fileobj)
                continue
            name = key.data
            seen[name] += len(chunk)
            room = keep - len(captured[name])
            if room > 0:
                captured[name] += chunk[:room]
        if seen["stdout"] + seen["stderr"] > keep * OUTPUT_DRAIN_FACTOR:
            killed = "output"
            break
    if killed:
        _kill_everything()
    left = max(0.1, deadline - time.monotonic())
    try:
        child.wait(timeout=left)
    except subprocess.TimeoutExpired:
        killed = killed or "wall_time"
        _kill_everything()
        child.wait()
    _kill_everything()  # whatever it left running in the background ends with it
    _reap()
    status = child.returncode
    used = resource.getrusage(resource.RUSAGE_CHILDREN)  # every reaped descendant (subreaper)
    cpu = used.ru_utime + used.ru_stime
    if not killed and status in (-signal.SIGXCPU, -signal.SIGKILL):
        if cpu >= float(limits["cpu_seconds"]) - 0.05:
            killed = "cpu_time"
    return {
        "exit_code": status,
        "killed": killed,
        "stdout": captured["stdout"].decode("utf-8", "replace"),
        "stderr": captured["stderr"].decode("utf-8", "replace"),
        "stdout_bytes": seen["stdout"],
        "stderr_bytes": seen["stderr"],
        "cpu_seconds": round(cpu, 3),
        "wall_seconds": round(time.monotonic() - started, 3),
    }


def _kill_everything():
    try:
        os.kill(-1, signal.SIGKILL)  # every process of the sandbox's user but this one
    except OSError:
        pass


def _reap():
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            time.sleep(0.01)


def collect_outputs(inputs, limit):
    """Regular files in the scratch directory that are new or changed, as text, up to `limit`
    bytes in all; anything else is listed with the reason it was left out."""
    files, skipped, total = {}, {}, 0
    for root, dirs, names in os.walk(WORK, followlinks=False):
        for name in sorted(names) + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, WORK)
            info = os.lstat(path)
            if not stat.S_ISREG(info.st_mode):
                skipped[rel] = "not a regular file"
                continue
            if total + info.st_size > limit:
                skipped[rel] = f"over the output limit ({info.st_size} bytes)"
                continue
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            with os.fdopen(fd, "rb") as f:
                data = f.read(limit - total + 1)
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                skipped[rel] = "binary (not UTF-8 text)"
                continue
            if inputs.get(rel) == text:
                continue
            files[rel] = text
            total += len(data)
    return files, skipped


def main():
    _prctl(PR_SET_DUMPABLE, 0)  # the code cannot reach this process's pipes through /proc
    _prctl(PR_SET_CHILD_SUBREAPER, 1)  # orphans come back here and are reaped and counted
    job = json.loads(sys.stdin.buffer.read())
    write_inputs(job["files"])
    report = run(job["code"], job["limits"])
    report["files"], report["files_skipped"] = collect_outputs(
        job["files"], int(job["limits"]["files_out_bytes"])
    )
    sys.stdout.write(json.dumps(report))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
