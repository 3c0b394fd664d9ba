"""Output folders: each belongs to one command, is written by one process at a time, and is checked before work.

Why: a fault corpus found tunelens losing or mixing results through its `--out` folders. `tune --overwrite`
deleted folders that were not tuning runs; `tunelens run --out <a tune folder>` replaced the tune's provenance;
two runs into one folder both "succeeded" (every training step logged twice); and a read-only or full output
folder was discovered only after minutes of scoring. So every command that writes `--out` first `claim`s it:

- the folder says what it is: `.tunelens-out.json` ({"kind": "tune" | "audit" | ...}), written when it is
  claimed; folders from before the marker are recognised by the files their command writes (`kind_of`). A
  command refuses a folder of another kind, and a non-empty folder that tunelens did not make, naming what is
  there, before doing any work;
- one writer at a time: `.tunelens.lock` holds the owner's pid and host under an exclusive `flock`, so a
  second writer gets one line naming the holder; the kernel drops the lock when its process dies, so a lock
  file left by a killed process is taken over, with a warning naming it;
- the folder is proven writable (a probe file) before the work starts: a read-only folder, a path that is a
  file, or a full disk is one line naming the path and what to do.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import tempfile
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from .errors import TunelensError

MARKER = ".tunelens-out.json"
LOCK = ".tunelens.lock"
# the file each command's folder is recognised by when it predates the marker
SIGNATURES = {"audit": "ledger.json", "eval": "results.json", "diff": "diff.json", "graft": "graft.json",
              "sweep": "sweep.json", "curve": "curve.json"}
_HIDDEN_OK = (MARKER, LOCK)


def kind_of(folder: Path) -> str | None:
    """What tunelens command made `folder` (its marker, else its files), or None."""
    folder = Path(folder)
    try:
        return json.loads((folder / MARKER).read_text())["kind"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    run_json = folder / "run.json"
    if run_json.is_file():
        try:
            head = json.loads(run_json.read_text())
        except (OSError, ValueError):
            head = {}
        if str(head.get("schema", "")).startswith("tunelens.run/"):
            return "run"
        if "data_files" in head or "config" in head:
            return "tune"
    for kind, name in SIGNATURES.items():
        if (folder / name).is_file():
            return kind
    return None


def mark(folder: Path, kind: str) -> None:
    """Say what `folder` is (`kind`), once: the marker the other commands check."""
    if not (Path(folder) / MARKER).is_file():
        from .io import write_json

        write_json(Path(folder) / MARKER, {"kind": kind,
                                           "created": datetime.now(timezone.utc).isoformat(timespec="seconds")})


def _contents(folder: Path, k: int = 4) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir() if p.name not in _HIDDEN_OK)
    return ", ".join(names[:k]) + (f" and {len(names) - k} more" if len(names) > k else "")


def check_kind(out: Path, kind: str, *, also: tuple[str, ...] = ()) -> None:
    """Refuse `out` unless it is new, empty, or a folder of `kind` (or one of `also`)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise TunelensError(f"--out {out} is a file, not a folder: choose a folder path")
    if not out.is_dir() or not any(p.name not in _HIDDEN_OK for p in out.iterdir()):
        return
    found = kind_of(out)
    if found in (kind, *also):
        return
    if found is None:
        raise TunelensError(f"--out {out} is not empty and was not made by `tunelens {kind}` (it holds "
                            f"{_contents(out)}): choose a new or empty folder")
    raise TunelensError(f"--out {out} is a `tunelens {found}` folder; `tunelens {kind}` does not write into "
                        "another command's folder: choose another --out")


def check_writable(out: Path) -> None:
    """Create `out` and a probe file in it, so a read-only folder or a full disk is found before the work."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".tunelens-probe.", delete=True) as f:
            f.write(b"x" * 4096)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise TunelensError(os_error_message(e, out)) from None


def os_error_message(e: OSError, path=None) -> str:
    """One line for an OSError on the output side: the path, the reason, what to do."""
    where = e.filename or path or "the output folder"
    what = {errno.ENOSPC: "the disk is full: free space or choose an --out on another disk",
            errno.EDQUOT: "the disk quota is exceeded: free space or choose another --out",
            errno.EACCES: "permission denied: choose a writable --out",
            errno.EPERM: "permission denied: choose a writable --out",
            errno.EROFS: "the file system is read-only: choose a writable --out",
            errno.EEXIST: "it exists: choose another --out",
            errno.ENOTDIR: "a part of the path is a file, not a folder: choose a folder path",
            errno.EISDIR: "it is a folder where a file was expected: choose another path"}.get(e.errno)
    return f"cannot write {where}: " + (what or f"{e.strerror or e}: check the path and the disk")


def set_aside(out: Path, prefix: str, names: tuple[str, ...] | None = None, *, beside: bool = False) -> Path | None:
    """Move earlier results out of `out` (one rename each) before a new attempt writes there, so nothing is
    destroyed before the new one succeeds: `names` (default: everything but the marker and the lock), into a
    hidden folder named `prefix`... inside `out` or, with `beside`, next to it. None when there was nothing to move. The caller
    deletes the returned folder on success and calls `put_back` on failure."""
    out = Path(out)
    present = [p for p in out.iterdir() if p.name not in _HIDDEN_OK and (names is None or p.name in names)]
    if not present:
        return None
    aside = Path(tempfile.mkdtemp(dir=out.parent if beside else out, prefix=prefix))
    for p in present:
        os.replace(p, aside / p.name)
    return aside


def put_back(out: Path, aside: Path, *, everything: bool = False) -> None:
    """The new attempt failed: remove what it wrote under the set-aside names (or, with `everything`, all but the
    marker, the lock and the set-aside folder itself) and move the earlier results back."""
    out, aside = Path(out), Path(aside)
    moved = {p.name for p in aside.iterdir()}
    for p in out.iterdir():
        if p.name in _HIDDEN_OK or p == aside or not (everything or p.name in moved):
            continue
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    for name in moved:
        os.replace(aside / name, out / name)
    aside.rmdir()


class Lock:
    """An exclusive lock on a folder: `.tunelens.lock` with the owner's pid, host and command under flock."""

    def __init__(self, folder: Path, command: str):
        self.path = Path(folder) / LOCK
        self.command = command
        self._fd: int | None = None

    def acquire(self) -> None:
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _read_holder(fd)
            os.close(fd)
            who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}" + (
                f" (`tunelens {holder['command']}`, since {holder.get('since', '?')})" if holder.get("command") else "")
            raise TunelensError(f"{self.path.parent} is in use by {who}: wait for it to finish, or choose "
                                "another --out") from None
        stale = _read_holder(fd)
        if stale.get("pid") and stale.get("pid") != os.getpid():
            from .progress import log

            log.warning(f"tunelens: warning: took over the lock on {self.path.parent} left by pid {stale['pid']} "
                        f"on {stale.get('host', '?')}, which is no longer running")
        me = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
              "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)  # an empty lock file: nobody's, and no stale-lock warning next time
        except OSError:
            pass
        os.close(self._fd)  # closing drops the flock
        self._fd = None


def _read_holder(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}


@contextmanager
def claim(out, kind: str, *, also: tuple[str, ...] = (), lock: bool = True):
    """Check `out` is ours (new, empty or of `kind`), writable, and free; hold its lock while the body runs.

    Only the main process of a distributed job claims (the others write under its lock)."""
    out = Path(out)
    if int(os.environ.get("RANK", "0")) != 0:
        yield out
        return
    check_kind(out, kind, also=also)
    check_writable(out)
    held = Lock(out, kind) if lock else None
    if held:
        held.acquire()
    try:
        mark(out, kind)
        yield out
    finally:
        if held:
            held.release()
