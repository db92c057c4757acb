"""Safe output and bounded input: every file ist-bench writes and every YAML file it reads goes through here.

Writing (`write_atomic`, `append_rows`, `check_writable`, `lock_results`, `repair_tail`):
- a whole file is written to a temp file made exclusively in the target's own folder (`tempfile.mkstemp`:
  O_CREAT | O_EXCL | O_NOFOLLOW, a random name), fsynced, then renamed over the target: a reader sees the
  old file or the new one, and a link planted at a guessable temp name is never followed;
- a target that exists and is not a regular file (a device node, a FIFO, a folder) is refused, never
  replaced or blocked on; so is a symlink, dangling or not: no file is written through a link (it could
  name any file outside the output folder);
- an output path is never one of the command's inputs (`--markdown` on the results file it reads, `run
  --out` on its own suite), and holds no control character (a name a terminal would render as something
  else);
- rows are appended with O_APPEND, each flushed and fsynced before the next;
- a results file is locked (fcntl.flock, non-blocking) for the length of a run: a second run on it refuses;
- before appending, a cut last line (a full disk, a crash), a BOM-only file or a last row without its
  newline is repaired in place, so a new row is never glued onto an old one.

Reading (`load_yaml`, `read_bounded`): size capped, UTF-8 only (a UTF-16/32 or binary file is one line),
nesting depth and alias expansion bounded, and an error names the file, line and column but never echoes
the file's content.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import stat
import tempfile
from pathlib import Path

import yaml

from ist_bench.errors import UsageError

MAX_YAML_BYTES = 1 << 20        # a suite is a few KB; table1.yaml is under 2 KB
MAX_YAML_DEPTH = 32             # suites nest 3-4 levels
MAX_YAML_NODES = 100_000        # after alias expansion
BOM = b"\xef\xbb\xbf"


def safe_name(name: str, what: str) -> str:
    """A name from an input (a suite's `name:`, `baseline --name`) used as a file name in a folder we
    choose: a plain name, never a path (no separator, no `..`, no leading dot, no NUL)."""
    s = str(name)
    if not s or s in (".", "..") or s.startswith(".") or any(c in s for c in "/\\\0") or len(s) > 200:
        raise UsageError(f"{what} {s[:80]!r} is not a plain file name (letters, digits, '-', '_', '.'; "
                         f"no '/', no '..', no leading '.')")
    return s


def _kind(mode: int) -> str:
    for test, word in ((stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return word
    return "not a regular file"


def resolve_target(path: str | Path) -> Path:
    """The file a write to `path` lands in: `path` itself. Refuses a symlink (dangling or not: no file is
    written through a link), anything that exists and is not a regular file, and a path holding a control
    character."""
    p = Path(path)
    if any(ord(c) < 32 or ord(c) == 127 for c in str(path)):
        raise UsageError(f"cannot write to {str(path)!r}: the path holds a control character")
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        return p
    if stat.S_ISLNK(st.st_mode):
        raise UsageError(f"cannot write results to {p}: it is a symlink (to {os.readlink(p)}); ist-bench writes no "
                         f"file through a link: give the path of the file itself")
    if not stat.S_ISREG(st.st_mode):
        raise UsageError(f"cannot write results to {p}: it is {_kind(st.st_mode)}, not a regular file")
    return p


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether two paths name one file (one that exists; links and `..` resolved)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def check_not_an_input(output: str | Path | None, inputs, what: str = "output") -> None:
    """An output that is one of the command's inputs would destroy it: refused (`-`, stdout, is fine)."""
    if not output or output == "-":
        return
    for source in inputs:
        if source and source != "-" and same_file(output, source):
            raise UsageError(f"{what} {output} is also an input of this command ({source}); it would be overwritten: "
                             f"give another path")


def _open_regular(path: Path, flags: int) -> int:
    """os.open that never follows a link, never blocks on a FIFO, and refuses a non-regular file."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o666)
    except OSError as e:
        if e.errno == errno.ENXIO:          # a FIFO with no reader: opening it for writing would block
            raise UsageError(f"cannot write results to {path}: it is a FIFO, not a regular file") from None
        if e.errno == errno.ELOOP:
            raise UsageError(f"cannot write results to {path}: it became a symlink") from None
        raise
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise UsageError(f"cannot write results to {path}: it is {_kind(mode)}, not a regular file")
    os.set_blocking(fd, True)
    return fd


def check_writable(path: str | Path | None) -> None:
    """Fail before the work, not after it, on an output path we cannot write. Creates the parent
    folders (as the write would) but never the file, never a dangling link's target, never blocks."""
    if not path:
        return
    p = resolve_target(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        if p.exists():
            os.close(_open_regular(p, os.O_WRONLY | os.O_APPEND))
        else:
            fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".probe")
            os.close(fd)
            os.unlink(tmp)
    except OSError as e:
        raise UsageError(f"cannot write results to {path}: {e.strerror or e}") from None


def check_jsonl(path: str | Path, what: str = "--json") -> None:
    """Rows are appended only to a JSONL file of rows (objects), or to a new or empty file: never to a
    binary file or any other text (its last bytes would be "repaired" away, then a row glued on). A last
    line cut short by an interrupted write is allowed (appending repairs it)."""
    p = Path(path)
    if not p.is_file() or p.stat().st_size == 0:
        return
    with open(p, "rb") as f:
        lines = f.read().split(b"\n")
    for i, line in enumerate(lines, 1):
        if not line.strip() or (i == len(lines) and not line.endswith(b"}")):
            continue
        try:
            ok = isinstance(json.loads(line.decode("utf-8-sig" if i == 1 else "utf-8")), dict)
        except (ValueError, UnicodeDecodeError, RecursionError):
            ok = False
        if not ok:
            raise UsageError(f"{what} {p}: line {i} is not a JSON row; rows are appended only to a JSONL file of "
                             f"rows (give a new file)")


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Write a whole file so that readers see the old one or the new one, never half (see the module
    docstring for what is refused). Keeps an existing file's permissions."""
    target = resolve_target(path)
    payload = data.encode() if isinstance(data, str) else data
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        mode = 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(target.parent)


def save_figure(fig, path: str | Path, **kw) -> str:
    """matplotlib's savefig, atomically (the format from the suffix, as savefig would)."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format=Path(path).suffix.lstrip(".") or "png", **kw)
    write_atomic(path, buf.getvalue())
    return str(path)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def append_rows(path: str | Path, rows) -> None:
    """Append rows to `path`, each flushed and fsynced before the next (a crash loses none). A result row
    (one with a `case`) is checked against the row schema first: ist-bench never writes a row its own
    reader would refuse (one such row makes the whole file unreadable to report, compare and --resume)."""
    from ist_bench import schema

    rows = list(rows)
    for row in rows:
        if isinstance(row, dict) and "case" in row and "status" in row:
            try:
                schema.check_row(row, "")
            except UsageError as e:
                raise UsageError(f"not writing a row to {path} that its reader would refuse: {e}") from None
    target = resolve_target(path)
    fd = _open_regular(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        for row in rows:
            _write_all(fd, (json.dumps(row) + "\n").encode())
            os.fsync(fd)
    finally:
        os.close(fd)


def repair_tail(path: str | Path, warn=None) -> str | None:
    """Make `path` safe to append to: drop a BOM-only content, a leading BOM, and a cut last line (bytes
    after the last newline that are not a whole JSON object); add the newline a whole last row lacks.
    In place (the file may be locked by this run). Returns what was done, or None."""
    target = resolve_target(path)
    fd = _open_regular(target, os.O_RDWR)
    try:
        size = os.fstat(fd).st_size
        head = os.pread(fd, len(BOM), 0)
        did = None
        if head == BOM:
            rest = os.pread(fd, size, len(BOM))
            os.pwrite(fd, rest, 0)
            os.ftruncate(fd, len(rest))
            size, did = len(rest), "removed a byte-order mark"
        if size == 0:
            return did
        window = min(size, 1 << 20)
        tail = os.pread(fd, window, size - window)
        if tail.endswith(b"\n"):
            return did
        cut = tail.rfind(b"\n")
        last = tail[cut + 1:]
        if cut < 0 and window < size:
            raise UsageError(f"{target}: its last line is over 1 MiB long; not a results file")
        try:
            whole = isinstance(json.loads(last), dict)
        except (ValueError, UnicodeDecodeError):
            whole = False
        if whole:
            os.lseek(fd, 0, os.SEEK_END)
            _write_all(fd, b"\n")
            did = "added the newline its last row lacked"
        else:
            os.ftruncate(fd, size - len(last))
            did = f"dropped a cut last line ({len(last)} bytes; an interrupted write, its case runs again)"
        os.fsync(fd)
    finally:
        os.close(fd)
    if warn and did:
        warn(f"{target}: {did}")
    return did


class ResultsLock:
    """An advisory lock (fcntl.flock) on a results file for the length of a run."""

    def __init__(self, path: str | Path, *, create: bool):
        """`create`: the file must not exist yet (made here, exclusively: of two runs racing for a new
        file, one wins); else it must exist. Refuses, with one line, a file another run holds."""
        target = resolve_target(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.fd = _open_regular(target, os.O_WRONLY | os.O_APPEND | (os.O_CREAT | os.O_EXCL if create else 0))
        except FileExistsError:
            raise UsageError(f"{path} exists; pass --resume to finish its run, --append to add rows, or another "
                             f"--out") from None
        except FileNotFoundError:
            raise UsageError(f"no results at {path}") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise UsageError(f"{path} is being written by another ist-bench run (it holds the file's lock); "
                             f"wait for it, or pass another --out") from None
        self.path, self.created = target, create

    def close(self) -> None:
        """Release the lock; a file this run created and never wrote a row to is removed."""
        if self.fd >= 0:
            if self.created and os.fstat(self.fd).st_size == 0:
                with contextlib.suppress(OSError):
                    os.unlink(self.path)
            os.close(self.fd)     # closing the descriptor releases the lock
            self.fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_bounded(path: str | Path, what: str, max_bytes: int) -> bytes:
    """A regular file's bytes, refusing (one line) a missing, non-regular or too large file."""
    p = Path(path)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise UsageError(f"{what} not found: {p}") from None
    except OSError as e:
        raise UsageError(f"cannot read {what} {p}: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UsageError(f"{what} {p} is {_kind(st.st_mode)}, not a regular file")
        if st.st_size > max_bytes:
            raise UsageError(f"{what} {p} is {st.st_size:,} bytes; the limit is {max_bytes:,}")
        data = os.read(fd, max_bytes + 1)
        if len(data) > max_bytes:
            raise UsageError(f"{what} {p} is over {max_bytes:,} bytes")
        return data
    except OSError as e:
        raise UsageError(f"cannot read {what} {p}: {e.strerror or e}") from None
    finally:
        os.close(fd)


def decode_text(data: bytes, path: str | Path, what: str) -> str:
    """UTF-8 text (a UTF-8 BOM is dropped); UTF-16/32, NUL bytes or invalid UTF-8 are one line."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff", b"\x00\x00\xfe\xff")):
        raise UsageError(f"{what} {path} is UTF-16/32 text; save it as UTF-8")
    if b"\0" in data:
        raise UsageError(f"{what} {path} is not text (it holds NUL bytes); expected UTF-8")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UsageError(f"{what} {path} is not UTF-8 (invalid byte at offset {e.start})") from None


class _BoundedLoader(yaml.SafeLoader):
    max_depth = MAX_YAML_DEPTH

    def compose_node(self, parent, index):
        self._depth = getattr(self, "_depth", 0) + 1
        try:
            if self._depth > self.max_depth:
                raise _TooDeep(self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


class _TooDeep(Exception):
    def __init__(self, mark):
        self.mark = mark


def _expanded(node, max_depth: int, max_nodes: int) -> None:
    """Refuse a node graph whose alias expansion is too large or too deep (or recursive): the count a
    printer or a walker of the loaded data would see, computed without expanding anything."""
    memo: dict[int, tuple[int, int]] = {}
    busy: set[int] = set()

    def walk(n, depth: int) -> tuple[int, int]:          # (nodes once expanded, height)
        key = id(n)
        if key in memo:
            return memo[key]
        if key in busy or depth > max_depth:
            raise UsageError("recursive")
        busy.add(key)
        children = []
        if isinstance(n, yaml.SequenceNode):
            children = n.value
        elif isinstance(n, yaml.MappingNode):
            children = [x for kv in n.value for x in kv]
        size, height = 1, 0
        for c in children:
            s, h = walk(c, depth + 1)
            size, height = size + s, max(height, h)
            if size > max_nodes or height + 1 > max_depth:
                raise UsageError("too big")
        busy.discard(key)
        memo[key] = (size, height + 1)
        return memo[key]

    walk(node, 1)


NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,39}")


def load_yaml(path: str | Path, what: str = "suite", *, keys: tuple[str, ...] | None = None,
              max_bytes: int = MAX_YAML_BYTES, max_depth: int = MAX_YAML_DEPTH, max_nodes: int = MAX_YAML_NODES):
    """yaml.safe_load of a file, bounded: size, encoding, nesting depth, alias expansion. Every refusal
    is one UsageError line naming the file (and line/column), never quoting its content. `keys`: the
    top-level keys allowed; a top-level key that is not even a name (a line of some other file, e.g.
    `run /etc/shadow`) is refused here by its line number, so no later message can quote it (`keys=()`:
    only that check)."""
    text = decode_text(read_bounded(path, f"{what} file", max_bytes), path, f"{what} file")
    try:
        loader = _BoundedLoader(text)   # the reader refuses control characters here, before any parse
    except yaml.YAMLError as e:
        raise UsageError(f"malformed {what} {path}: {getattr(e, 'reason', None) or 'not YAML'}") from None
    loader.max_depth = max_depth
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        try:
            _expanded(node, max_depth, max_nodes)
        except UsageError:
            raise UsageError(f"{what} file {path}: its aliases expand to more than {max_nodes:,} values or "
                             f"{max_depth} levels (or refer to themselves); write it out without them") from None
        except RecursionError:
            raise UsageError(f"{what} file {path} nests deeper than {max_depth} levels") from None
        if keys is not None and isinstance(node, yaml.MappingNode):
            for k, _ in node.value:
                if not (isinstance(k, yaml.ScalarNode) and (k.value in keys or NAME.fullmatch(k.value))):
                    raise UsageError(f"{path} is not a{'n' if what[0] in 'aeiou' else ''} {what} file: the "
                                     f"key at line {k.start_mark.line + 1} is not a name"
                                     + (f" (valid: {', '.join(keys)})" if keys else ""))
        return loader.construct_document(node)
    except _TooDeep as e:
        raise UsageError(f"{what} file {path} nests deeper than {max_depth} levels "
                         f"(line {e.mark.line + 1})") from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UsageError(f"malformed {what} {path}: {e.problem or e.context or 'not YAML'}{where}") from None
    except yaml.YAMLError:
        raise UsageError(f"malformed {what} {path}: not YAML") from None
    except UsageError:
        raise
    except (ValueError, OverflowError) as e:   # e.g. an integer of thousands of digits
        raise UsageError(f"malformed {what} {path}: a value cannot be read ({str(e).split(':')[0][:80]})") from None
    finally:
        loader.dispose()


def terminal_width() -> int | None:
    """Make the console safe for any environment, for rich's Console(width=...): an output stream whose
    encoding cannot hold a character (PYTHONIOENCODING=ascii) writes `?` instead of raising, and a
    COLUMNS that is not a usable width (0, negative, junk: rich would then print nothing) means 80."""
    import sys

    for stream in (sys.stdout, sys.stderr):
        encoding = (getattr(stream, "encoding", None) or "utf-8").lower().replace("-", "").replace("_", "")
        if encoding != "utf8" and hasattr(stream, "reconfigure"):
            with contextlib.suppress(Exception):
                stream.reconfigure(errors="replace")
    cols = os.environ.get("COLUMNS")
    if cols is None:
        return None
    return int(cols) if cols.strip().isdigit() and int(cols) >= 20 else 80
