"""Runs inside the sandbox as its PID 1 (`python -I -S -c <this file>`), never in an agent.

Reads one JSON job on stdin (`code`, `files`, `limits`, `nonce`), writes the files into the
scratch directory, runs the code as a child under per-process resource limits, and supervises
the whole process tree: CPU time and memory summed over every process, the scratch
directory's inode count, wall time and output volume; the first limit passed ends everything.
Then it writes one JSON report on stdout (with the job's nonce). Standard library only.

As PID 1 of the sandbox's PID namespace and not dumpable, the code cannot signal it, trace it
or reach its pipes; when it exits, every process left in the namespace dies with it.
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
PR_SET_DUMPABLE = 4
OUTPUT_DRAIN_FACTOR = 16  # output past limit x this ends the program (reported as "output")
POLL_S = 0.05
MAX_INODES = 10_000  # files and directories in the scratch directory
MAX_ENTRIES_OUT = 1_000  # files listed in the report
MAX_DEPTH = 32
TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


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


def usage():
    """CPU seconds of every process the code started (running or reaped), the memory they hold
    (resident pages and SysV shared memory), and the inodes used in the scratch directory."""
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu, memory = reaped.ru_utime + reaped.ru_stime, 0
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            cpu += (int(fields[11]) + int(fields[12])) / TICKS
            with open(f"/proc/{entry}/statm") as f:
                memory += int(f.read().split()[1]) * PAGE
        except (OSError, ValueError, IndexError):
            continue
    try:
        with open("/proc/sysvipc/shm") as f:
            next(f)
            memory += sum(int(line.split()[3]) for line in f)
    except (OSError, ValueError, IndexError, StopIteration):
        pass
    scratch = os.statvfs(WORK)
    return cpu, memory, scratch.f_files - scratch.f_ffree


def run(code, limits):
    env = {"HOME": WORK, "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "TMPDIR": WORK}
    started = time.monotonic()
    child = subprocess.Popen(
        [sys.executable, "-I", "-"],
        cwd=WORK,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=child_limits(limits),
        start_new_session=True,
    )
    assert child.stdin is not None and child.stdout is not None and child.stderr is not None
    try:
        child.stdin.write(code.encode())  # the program; the code itself has no stdin
        child.stdin.close()
    except OSError:
        pass
    keep = int(limits["output_bytes"])
    captured = {"stdout": bytearray(), "stderr": bytearray()}
    seen = {"stdout": 0, "stderr": 0}
    killed = ""
    deadline = started + float(limits["wall_seconds"])
    sel = selectors.DefaultSelector()
    sel.register(child.stdout, selectors.EVENT_READ, "stdout")
    sel.register(child.stderr, selectors.EVENT_READ, "stderr")
    cpu = 0.0
    while not killed:
        _reap(child)
        cpu, memory, inodes = usage()
        if cpu >= float(limits["cpu_seconds"]):
            killed = "cpu_time"
        elif memory > int(limits["memory_bytes"]):
            killed = "memory"
        elif inodes > MAX_INODES:
            killed = "files"
        elif seen["stdout"] + seen["stderr"] > keep * OUTPUT_DRAIN_FACTOR:
            killed = "output"
        elif time.monotonic() >= deadline:
            killed = "wall_time"
        if killed or (child.returncode is not None and not sel.get_map()):
            break
        if child.returncode is not None:
            _kill_everything()  # background processes holding the pipes open end with it
        for key, _ in sel.select(timeout=POLL_S):
            chunk = os.read(key.fd, 65536)
            if not chunk:
                sel.unregister(key.fileobj)
                continue
            seen[key.data] += len(chunk)
            room = keep - len(captured[key.data])
            if room > 0:
                captured[key.data] += chunk[:room]
        if not sel.get_map() and child.returncode is None:
            time.sleep(POLL_S)  # pipes closed, the program still runs: keep supervising
    _kill_everything()
    while child.returncode is None:
        _reap(child)
        time.sleep(0.005)
    _reap(child)
    cpu = max(cpu, usage()[0])
    status = child.returncode
    if not killed and status == -signal.SIGXCPU:
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
        os.kill(-1, signal.SIGKILL)  # every process in the namespace but this one (PID 1)
    except OSError:
        pass


def _reap(child):
    """Reap every exited process (this is PID 1); the program's own status goes to `child`."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if pid == child.pid:
            child.returncode = os.waitstatus_to_exitcode(status)


def _name(path):
    return os.fsencode(os.path.relpath(path, WORK)).decode("utf-8", "replace")


def collect_outputs(inputs, limit):
    """Regular files in the scratch directory that are new or changed, as text, up to `limit`
    bytes and MAX_ENTRIES_OUT entries in all; anything else listed with why it was left out."""
    files: dict[str, str] = {}
    skipped: dict[str, str] = {}
    total = 0
    pending = [(WORK, 0)]
    while pending and len(files) + len(skipped) < MAX_ENTRIES_OUT:
        folder, depth = pending.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            skipped[_name(folder)] = f"unreadable directory ({exc.strerror})"
            continue
        for entry in entries:
            if len(files) + len(skipped) >= MAX_ENTRIES_OUT:
                skipped["..."] = f"more than {MAX_ENTRIES_OUT} entries: the rest is not listed"
                break
            rel = _name(entry.path)
            try:
                info = entry.stat(follow_symlinks=False)
                if stat.S_ISDIR(info.st_mode):
                    if depth < MAX_DEPTH:
                        pending.append((entry.path, depth + 1))
                    else:
                        skipped[rel] = f"deeper than {MAX_DEPTH} directories"
                    continue
                if not stat.S_ISREG(info.st_mode):
                    skipped[rel] = "not a regular file"
                    continue
                if total + info.st_size > limit:
                    skipped[rel] = f"over the output limit ({info.st_size} bytes)"
                    continue
                fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
                with os.fdopen(fd, "rb") as f:
                    data = f.read(limit - total + 1)
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                skipped[rel] = "binary (not UTF-8 text)"
                continue
            except OSError as exc:
                skipped[rel] = f"unreadable ({exc.strerror})"
                continue
            if inputs.get(rel) == text:
                continue
            files[rel] = text
            total += len(data)
    return files, skipped


def main():
    _prctl(PR_SET_DUMPABLE, 0)  # the code cannot reach this process's memory or pipes
    job = json.loads(sys.stdin.buffer.read())
    sys.stdin.close()
    try:
        write_inputs(job["files"])
    except OSError as exc:
        report = {"error": f"the input files could not be written: {exc}"}
    else:
        report = run(job["code"], job["limits"])
        try:
            report["files"], report["files_skipped"] = collect_outputs(
                job["files"], int(job["limits"]["files_out_bytes"])
            )
        except (OSError, RecursionError, ValueError) as exc:
            report["files"], report["files_skipped"] = {}, {"": f"not collected: {exc}"}
    report["nonce"] = job["nonce"]
    sys.stdout.buffer.write(json.dumps(report, ensure_ascii=False).encode("utf-8"))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
