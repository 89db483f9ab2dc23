"""Crash-safe file output.

Every file uniseg writes (masks, features, converted datasets, checkpoints) goes through these
helpers: the content is produced under a temporary name next to the destination and renamed
into place only once complete. An interrupted run, a bad input discovered half-way or a full
disk therefore never leaves a truncated file where a user (or QuPath) would pick it up.

Several files that only make sense together (the outputs of one segmented image) are published
with :func:`publish_together`: all of them are first complete under temporary names, then a small
*journal* lists the renames, and a *marker* file (the image's summary) is renamed last. A process
killed during the renames leaves the journal behind; :func:`recover_folder` finishes those renames
at the next start. A set without its marker is incomplete, never a mix of two runs that looks whole.

Temporary names carry the host and process id of their writer
(``.<name>.partial-<host>-<pid>-<random><suffix>``), so :func:`recover_folder` can remove the
leftovers of dead processes on this host without touching those of a run that is still writing
into the same folder.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import secrets
import shutil
import socket
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

from .typing_utils import PathLike

__all__ = ["atomic_output", "atomic_output_dir", "OutputWriteError", "PendingFile", "publish_together",
           "recover_folder", "remove_stale_temporaries"]

_TEMP_RE = re.compile(r"^\.(?P<name>.*)\.partial-(?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+)-[0-9a-f]+(\.[^.]*)?$")
_JOURNAL_RE = re.compile(r"^\.(?P<name>.+)\.journal-(?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+)$")


class OutputWriteError(OSError):
    """An output could not be written (full disk, read-only folder, ...); the message names the file."""


# ---------------------------------------------------------------------------- temporary names
def _host() -> str:
    """This machine's name as it appears in temporary names (letters, digits and '_' only)."""
    return re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname())[:40] or "host"


def _temp_name(path: Path, kind: str = "partial") -> Path:
    """A fresh hidden sibling name for ``path`` (not created). The real suffix stays last so writers
    that dispatch on it (tifffile, cv2, np.save) behave."""
    return path.with_name(f".{path.stem[:100]}.{kind}-{_host()}-{os.getpid()}-{secrets.token_hex(4)}{path.suffix}")


def _temp_sibling(path: Path, is_dir: bool) -> Path:
    """Create an empty temporary file (or folder) next to ``path``, with the usual permissions."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = _temp_name(path)
        try:
            if is_dir:
                os.mkdir(tmp)  # 0o777 minus the umask, like any new folder
            else:
                os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:  # 32 random bits collided: draw again
            continue


def _owner(name: str, pattern: re.Pattern) -> Optional[Tuple[str, int]]:
    match = pattern.match(name)
    return None if match is None else (match["host"], int(match["pid"]))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, belongs to another user
        return True
    return True


def _owner_dead(owner: Optional[Tuple[str, int]]) -> bool:
    """Only a process of this host can be checked; one of another host is assumed alive."""
    return owner is not None and owner[0] == _host() and not _pid_alive(owner[1])


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def remove_stale_temporaries(folder: PathLike, keep: Sequence[PathLike] = ()) -> List[Path]:
    """Delete the temporaries of dead processes of this host in ``folder`` and its direct subfolders.

    Temporaries of live processes, of other hosts (which cannot be checked), those in ``keep`` and
    files not named like uniseg's temporaries are kept. Returns what was removed.
    """
    keep = {Path(p) for p in keep}
    folder = Path(folder)
    removed: List[Path] = []
    if not folder.is_dir():
        return removed
    folders = [folder] + [p for p in folder.iterdir() if p.is_dir() and _owner(p.name, _TEMP_RE) is None]
    for where in folders:
        for entry in list(where.iterdir()):
            if _owner_dead(_owner(entry.name, _TEMP_RE)) and entry not in keep:
                _remove(entry)
                removed.append(entry)
    return removed


# ---------------------------------------------------------------------------- one file
class PendingFile:
    """A file written under a temporary sibling name (``tmp``) until :meth:`commit` renames it to ``path``.

    For writing that spans several calls (a sink's ``open`` ... ``close``); :func:`atomic_output` is
    the ``with``-block form. :meth:`discard` removes the temporary and may be called at any time.
    """

    def __init__(self, path: PathLike):
        self.path = Path(path)
        self.tmp: Path = _temp_sibling(self.path, is_dir=False)
        self._done = False

    @property
    def done(self) -> bool:
        """Committed, discarded or handed over to a journal: nothing left to do for this object."""
        return self._done

    def commit(self) -> Path:
        if self._done:
            raise RuntimeError(f"{self.path}: already committed or discarded")
        self._done = True
        try:
            os.replace(self.tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                self.tmp.unlink()
            raise
        return self.path

    def discard(self) -> None:
        if self._done:
            return
        self._done = True
        with contextlib.suppress(FileNotFoundError):
            self.tmp.unlink()

    def _hand_over(self) -> None:
        """The temporary now belongs to a journal: neither commit nor discard may touch it."""
        self._done = True


@contextlib.contextmanager
def atomic_output(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path; on success it replaces ``path``, on any exception it is removed."""
    pending = PendingFile(path)
    try:
        yield pending.tmp
    except BaseException:
        pending.discard()
        raise
    pending.commit()


def _replace_dir(tmp: Path, final: Path) -> None:
    """Put folder ``tmp`` at ``final``; an existing ``final`` is first moved to a temporary name."""
    if final.exists():
        backup = _temp_name(final)
        os.replace(final, backup)
        os.replace(tmp, final)
        shutil.rmtree(backup, ignore_errors=True)
    else:
        os.replace(tmp, final)


@contextlib.contextmanager
def atomic_output_dir(path: PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``path`` when the block completes.

    An existing non-empty ``path`` is an error unless ``overwrite`` is set, in which case it is
    replaced only after the new content is complete.
    """
    final = Path(path)
    if final.exists() and any(final.iterdir()) and not overwrite:
        raise FileExistsError(f"{final}: output folder exists and is not empty (use --overwrite, or "
                              f"overwrite=True from Python, to replace it)")
    tmp = _temp_sibling(final, is_dir=True)
    try:
        yield tmp
        _replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ---------------------------------------------------------------------------- sets of files
def _fsync(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    except OSError as exc:  # some file systems cannot sync folders; the data files are synced
        if not (directory and exc.errno in (errno.EINVAL, errno.ENOTSUP)):
            raise
    finally:
        os.close(fd)


def _journal_path(marker: Path) -> Path:
    return marker.with_name(f".{marker.name}.journal-{_host()}-{os.getpid()}")


def publish_together(files: Sequence[PendingFile], marker: PendingFile,
                     remove: Sequence[PathLike] = ()) -> List[Path]:
    """Publish complete temporaries as one set, ``marker`` last; delete ``remove`` (an earlier set's leftovers).

    The marker's existence is what says "this set is complete". Order: the data are synced; a
    journal listing every step is written atomically; the old marker is deleted (the old set is no
    longer complete), then ``remove``, then each rename, the new marker last; the journal goes.
    A process killed anywhere in between leaves either the old complete set or a set without
    marker plus the journal, from which :func:`recover_folder` finishes the renames: every
    temporary named in the journal was complete before the journal was written.

    All paths must be inside the marker's folder (or its subfolders). Returns the published paths,
    the marker last. The temporaries belong to this function from the call on: a failure before the
    journal exists removes them and changes nothing else; a failure after it raises
    :class:`OutputWriteError` and leaves the journal (and the temporaries it names) to recovery.
    """
    folder = marker.path.parent
    pending = list(files) + [marker]
    for item in pending:
        if item.done:
            raise RuntimeError(f"{item.path}: already committed or discarded")
        if item.path.is_dir():  # a rename could never succeed: refuse before anything changes
            raise IsADirectoryError(f"{item.path}: a folder is in the way of this output file")
    for item in pending:  # from here on this function alone decides what happens to the temporaries
        item._hand_over()
    journal = _journal_path(marker.path)
    try:
        steps = []
        for item in pending:
            _fsync(item.tmp)
            stat = os.stat(item.tmp)  # a rename keeps the file's identity: how recovery knows it was done
            steps.append([os.path.relpath(item.tmp, folder), os.path.relpath(item.path, folder),
                          [stat.st_dev, stat.st_ino]])
        plan = {"publish": steps, "remove": [os.path.relpath(path, folder) for path in remove]}
        with atomic_output(journal) as tmp:
            with open(tmp, "w") as fh:
                json.dump(plan, fh)
                fh.flush()
                os.fsync(fh.fileno())
    except BaseException:  # nothing was changed: the temporaries go
        for item in pending:
            with contextlib.suppress(FileNotFoundError):
                item.tmp.unlink()
        raise
    try:
        _roll_forward(plan, folder)
        _fsync(folder, directory=True)
        journal.unlink()
    except Exception as exc:
        raise OutputWriteError(
            f"{marker.path}: publishing the outputs was interrupted ({exc}); they are incomplete (no "
            f"{marker.path.name}) until the next run in {folder} completes them from {journal.name}") from exc
    return [item.path for item in pending]


def _same_file(path: Path, identity: tuple) -> bool:
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return False
    return (stat.st_dev, stat.st_ino) == identity


def _roll_forward(plan: dict, folder: Path) -> List[Path]:
    """Carry out a journal's plan; safe to repeat after any interruption. Returns outputs that are missing."""
    steps = [(folder / tmp, folder / final, tuple(identity)) for tmp, final, identity in plan["publish"]]
    marker_tmp, marker, _ = steps[-1]
    if not marker_tmp.exists():
        return []  # the marker is renamed last: everything before it is done
    with contextlib.suppress(FileNotFoundError):
        marker.unlink()  # from here on the old set no longer claims to be complete
    for path in plan["remove"]:
        path = folder / path
        _remove(path)
        parent = path.parent
        if parent != folder and parent.is_dir() and not any(parent.iterdir()):
            with contextlib.suppress(OSError):
                parent.rmdir()  # an output folder (per-class maps) left empty by the old set
    missing = []
    for tmp, final, identity in steps[:-1]:
        if tmp.exists():
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, final)
        elif not _same_file(final, identity):  # neither staged nor renamed: lost (deleted meanwhile)
            missing.append(final)
    if missing:  # only if someone deleted files meanwhile: never mark such a set complete
        with contextlib.suppress(FileNotFoundError):
            marker_tmp.unlink()
        return missing
    os.replace(marker_tmp, marker)
    return []


def _read_plan(fh) -> Optional[dict]:
    try:
        plan = json.load(fh)
        ok = (isinstance(plan, dict) and isinstance(plan.get("remove"), list) and plan.get("publish")
              and all(isinstance(step, list) and len(step) == 3 and len(step[2]) == 2 for step in plan["publish"]))
    except ValueError:
        ok = False
    return plan if ok else None


def recover_folder(folder: PathLike) -> List[str]:
    """Finish the commits that dead processes of this host left in ``folder``; remove their temporaries.

    Run it before writing into a folder that earlier runs may have been killed in. Journals of live
    processes and of other hosts are left alone. Returns a line per thing done, for the log.
    """
    folder = Path(folder)
    notes: List[str] = []
    if not folder.is_dir():
        return notes
    waiting: List[Path] = []  # temporaries named by journals left in place: still needed
    for journal in sorted(folder.iterdir()):
        if not _owner_dead(_owner(journal.name, _JOURNAL_RE)):
            continue
        try:
            fh = open(journal)
        except FileNotFoundError:  # another process finished it first
            continue
        with fh:
            fcntl.flock(fh, fcntl.LOCK_EX)  # one recovering process at a time
            if not journal.exists():
                continue
            plan = _read_plan(fh)
            if plan is None:
                notes.append(f"{journal}: unreadable commit journal, left in place; the set it belongs to has "
                             f"no summary and stays incomplete (delete the journal to silence this)")
                continue
            try:
                missing = _roll_forward(plan, folder)
            except OSError as exc:  # one broken set must not stop work in the folder
                notes.append(f"{journal}: could not complete an interrupted commit ({exc}); its set stays "
                             f"incomplete and this is tried again at the next start")
                waiting.extend(folder / step[0] for step in plan["publish"])
                continue
            journal.unlink()
        marker = folder / plan["publish"][-1][1]
        if missing:
            notes.append(f"{marker}: an interrupted commit could not be completed, outputs missing: "
                         f"{[str(p) for p in missing]}; the set stays incomplete")
        else:
            notes.append(f"{marker}: completed the commit of a run that was interrupted ({journal.name})")
    removed = remove_stale_temporaries(folder, keep=waiting)
    if removed:
        notes.append(f"{folder}: removed {len(removed)} temporary file(s) of runs that were killed")
    return notes
