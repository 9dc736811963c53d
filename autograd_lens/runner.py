"""Run a script or a module under :func:`autograd_lens.watch`, the way ``python`` would run it.

``run_script("train.py", ["--epochs", "1"])`` does what ``python train.py --epochs 1`` does:
``sys.argv`` is the script and its arguments, the script runs as ``__main__`` (its
``if __name__ == "__main__":`` block runs), and its folder comes first on ``sys.path``.
``run_module("pkg.train", [...])`` does what ``python -m pkg.train ...`` does. Both return a
:class:`RunResult`: the watch, the report, the script's own exit status and the exception it
died of, if any. ``sys.argv``, ``sys.path`` and ``sys.modules["__main__"]`` are restored after.

Problems with the input (a missing file, a directory, a file that is not Python, a syntax error,
an unknown module) raise :class:`~autograd_lens.errors.LensError` before anything runs.
"""

from __future__ import annotations

import builtins
import dataclasses
import importlib.machinery
import importlib.util
import os
import signal
import sys
import threading
import traceback
import types
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from .errors import LensError
from .findings import ERROR, WARNING, Finding, Site, severity_rank
from .report import Report

#: Exit status of a program stopped by Ctrl-C (128 + SIGINT), as shells report it.
INTERRUPTED = 128 + signal.SIGINT
#: Exit status of a program stopped by SIGTERM (128 + SIGTERM), as shells report it.
TERMINATED = 128 + signal.SIGTERM

#: ``Report.status`` of a run: how it ended (``report.json`` says the same).
OK = "ok"  # the script succeeded; no findings at or above ``fail_on``
FINDINGS = "findings"  # the script succeeded; findings at or above ``fail_on``
SCRIPT_ERROR = "script-error"  # the script raised, or exited with a status other than 0
INTERRUPTED_STATUS = "interrupted"  # Ctrl-C (KeyboardInterrupt)
TERMINATED_STATUS = "terminated"  # SIGTERM
STATUSES = (OK, FINDINGS, SCRIPT_ERROR, INTERRUPTED_STATUS, TERMINATED_STATUS)

#: ``fail_on`` values: the least severe finding that makes the run fail.
FAIL_ON = ("error", "warning", "never")

_SCRIPT_SUFFIXES = (".py", ".pyw")

# Frames of these modules are machinery between the lens and the user's code.
_MACHINERY = ("autograd_lens", "runpy", "click", "importlib._bootstrap")


class Terminated(BaseException):
    """Raised in the program's main thread when SIGTERM arrives, so that the report of what ran
    can still be written. Like ``KeyboardInterrupt``, ``except Exception`` does not catch it."""


class ScriptSyntaxError(LensError):
    """The script does not compile. ``detail`` is the error as Python prints it (file, line, caret)."""

    def __init__(self, message: str, detail: str) -> None:
        super().__init__(message)
        self.detail = detail


@dataclass
class Program:
    """A compiled program, ready to run as ``__main__``."""

    code: types.CodeType
    display: str  # what the user named: "train.py" or "-m pkg.train"
    argv0: str
    path0: str
    main_globals: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunResult:
    """What a traced run produced.

    ``script_status`` is the status the program itself would have exited with under ``python``:
    0 when it ran to the end, ``n`` for ``sys.exit(n)``, 1 for ``sys.exit("message")`` and for an
    uncaught exception, 130 for Ctrl-C, 143 for SIGTERM (``signal`` then names the signal, which
    the command line re-raises so that the shell sees the program end as it would have).
    ``exit_status`` adds the findings: the script's status when it is not 0, else
    ``findings_status`` when findings at or above ``fail_on`` exist, else 0. ``report.status``
    says which (:data:`STATUSES`).
    """

    watch: Any  # autograd_lens.watch.Watch
    report: Report
    script_status: int
    exit_status: int
    failing: tuple[Finding, ...] = ()
    exception: BaseException | None = None
    exit_message: str | None = None
    interrupted: bool = False
    excepthook: Callable[..., Any] = sys.__excepthook__
    terminated: bool = False

    @property
    def signal(self) -> int | None:
        """The signal that stopped the program (SIGINT for Ctrl-C, SIGTERM), or None."""
        if self.terminated:
            return int(signal.SIGTERM)
        if self.interrupted:
            return int(signal.SIGINT)
        return None

    @property
    def graphs(self) -> dict[str, Any]:
        """Graph key (``"train.py:56"``) -> the first graph of that backward site."""
        return dict(self.watch.graphs)

    def graph_sites(self) -> dict[str, Site]:
        """Graph key -> the site of the backward call it was taken at."""
        sites: dict[str, Site] = {}
        for call in self.watch.calls:
            key = getattr(call, "graph_key", None)
            if key and key not in sites:
                sites[key] = call.site
        return sites

    def print_exception(self, file: TextIO | None = None) -> None:
        """Print the uncaught exception as Python would, with only the user's frames.

        Uses the program's own ``sys.excepthook`` if it installed one; ``sys.exit("message")``
        prints the message.
        """
        out = file if file is not None else sys.stderr
        if self.exit_message is not None:
            print(self.exit_message, file=out)
            return
        exc = self.exception
        if exc is None:
            return
        if file is None and self.excepthook is not sys.__excepthook__:
            try:
                self.excepthook(type(exc), exc, exc.__traceback__)
                return
            except Exception:
                pass
        out.write("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
        out.flush()


# ----------------------------------------------------------------------------------------------
# preparing a program
# ----------------------------------------------------------------------------------------------


def load_script(path: str | os.PathLike[str]) -> Program:
    """Compile the script at ``path`` as ``python path`` would; ``LensError`` on bad input."""
    shown = os.fspath(path)
    p = Path(shown)
    if not p.exists():
        raise LensError(f"script {shown!r} does not exist")
    if p.is_dir():
        raise LensError(f"{shown!r} is a directory, not a Python script; give the script's file, or -m MODULE")
    try:
        source = p.read_bytes()
    except OSError as exc:
        raise LensError(f"cannot read script {shown!r}: {exc.strerror or exc}") from None
    full = os.path.abspath(shown)
    code = _compile(source, full, shown, is_script=p.suffix.lower() in _SCRIPT_SUFFIXES)
    g = _main_globals(full)
    return Program(code, shown, shown, os.path.dirname(os.path.realpath(full)), g)


def load_module(name: str) -> Program:
    """Find and compile module ``name`` as ``python -m name`` would; ``LensError`` on bad input.

    The current folder is put first on ``sys.path`` for the search (as ``python -m`` does) and
    taken off again; parent packages are imported.
    """
    if not name or name.startswith("."):
        raise LensError(f"-m needs an absolute module name; got {name!r}")
    cwd = os.getcwd()
    with _path_first(cwd):
        spec = _find_spec(name)
        if spec.submodule_search_locations is not None:
            main_name = f"{name}.__main__"
            try:
                spec = _find_spec(main_name)
            except LensError:
                raise LensError(
                    f"{name!r} is a package and has no __main__.py, so it cannot be run with -m"
                ) from None
        loader = spec.loader
        if loader is None or not hasattr(loader, "get_code"):
            raise LensError(f"module {spec.name!r} has no code to run (a namespace package?)")
        try:
            code = loader.get_code(spec.name)
        except SyntaxError as exc:
            raise _syntax_error(exc, spec.origin or spec.name) from None
        except ImportError as exc:
            raise LensError(f"cannot load module {spec.name!r}: {exc}") from None
    if code is None:
        raise LensError(f"module {spec.name!r} has no code to run")
    origin = spec.origin or spec.name
    g = _main_globals(origin if spec.has_location else None)
    g["__spec__"] = spec
    g["__loader__"] = loader
    g["__package__"] = spec.parent
    if spec.cached and spec.has_location:
        g["__cached__"] = spec.cached
    return Program(code, f"-m {name}", origin, cwd, g)


def _find_spec(name: str) -> importlib.machinery.ModuleSpec:
    try:
        spec = importlib.util.find_spec(name)
    except ModuleNotFoundError as exc:
        raise LensError(f"no module named {exc.name or name!r} (looked for -m {name})") from None
    except (ImportError, ValueError) as exc:
        raise LensError(f"cannot find module {name!r}: {exc}") from None
    except Exception as exc:
        raise LensError(f"importing the package of {name!r} failed: {type(exc).__name__}: {exc}") from None
    if spec is None:
        raise LensError(f"no module named {name!r}")
    return spec


def _compile(source: bytes, filename: str, shown: str, *, is_script: bool) -> types.CodeType:
    if b"\0" in source:
        raise LensError(f"{shown!r} is not a Python script (it is a binary file)")
    try:
        return compile(source, filename, "exec", dont_inherit=True)
    except (SyntaxError, ValueError) as exc:
        if not isinstance(exc, SyntaxError):
            raise LensError(f"{shown!r} is not a Python script: {exc}") from None
        if not is_script:
            where = f" (line {exc.lineno})" if exc.lineno else ""
            raise LensError(f"{shown!r} is not a Python script: it does not compile: {exc.msg}{where}") from None
        raise _syntax_error(exc, shown) from None


def _syntax_error(exc: SyntaxError, shown: str) -> ScriptSyntaxError:
    detail = "".join(traceback.format_exception_only(type(exc), exc))
    where = f"{shown}:{exc.lineno}" if exc.lineno else shown
    return ScriptSyntaxError(f"{where}: {type(exc).__name__}: {exc.msg}; the script did not run", detail)


def _main_globals(file: str | None) -> dict[str, Any]:
    g: dict[str, Any] = {
        "__name__": "__main__",
        "__doc__": None,
        "__package__": None,
        "__loader__": None,
        "__spec__": None,
        "__builtins__": builtins,
    }
    if file is not None:
        g["__file__"] = file
        g["__cached__"] = None
    return g


@contextmanager
def _path_first(entry: str) -> Iterator[None]:
    sys.path.insert(0, entry)
    try:
        yield
    finally:
        try:
            sys.path.remove(entry)
        except ValueError:
            pass


# ----------------------------------------------------------------------------------------------
# running it
# ----------------------------------------------------------------------------------------------


def run_script(
    path: str | os.PathLike[str],
    args: Sequence[str] = (),
    **options: Any,
) -> RunResult:
    """Run the script at ``path`` with ``args`` under ``watch()``; see :func:`run` for options."""
    return run(load_script(path), args, **options)


def run_module(name: str, args: Sequence[str] = (), **options: Any) -> RunResult:
    """Run module ``name`` (as ``python -m name``) with ``args`` under ``watch()``; see :func:`run`."""
    return run(load_module(name), args, **options)


def check_rules(rule_ids: Sequence[str]) -> tuple[str, ...]:
    """The rule ids, checked; ``LensError`` naming the known rules for an unknown one."""
    from .checks import get_rule

    return tuple(get_rule(r).id for r in rule_ids)


def run(
    program: Program,
    args: Sequence[str] = (),
    *,
    on_finding: Callable[[Finding], None] | None = None,
    select: Sequence[str] = (),
    ignore: Sequence[str] = (),
    fail_on: str = "error",
    stdout_to_stderr: bool = False,
    findings_status: int = 1,
    skip: Sequence[str] = (),
) -> RunResult:
    """Run ``program`` as ``__main__`` under ``watch()`` and return what happened.

    Args:
        program: from :func:`load_script` or :func:`load_module`.
        args: the program's arguments (``sys.argv[1:]``).
        on_finding: called once with each new finding, as it happens (after ``select``/``ignore``).
        select: only these rules (all when empty).
        ignore: not these rules.
        fail_on: ``"error"``, ``"warning"`` or ``"never"``: the least severe finding that makes
            ``exit_status`` 1.
        stdout_to_stderr: send what the program writes to standard output to standard error
            instead (keeps the lens's own standard output clean, e.g. for JSON).
        findings_status: ``exit_status`` when the program succeeded and findings at or above
            ``fail_on`` exist (``lens trace`` uses its own code, see ``cli/exit_codes.py``).
        skip: packages whose frames are not the user's, besides the known training frameworks.

    SIGTERM while the program runs (when it has not set a handler of its own) stops it as Ctrl-C
    would, so that the report of what ran is kept; ``result.terminated`` says so. The working
    directory is restored after the program, as are ``sys.argv`` and ``sys.path``.
    """
    from .watch import watch

    if fail_on not in FAIL_ON:
        raise LensError(f"fail_on must be one of {', '.join(FAIL_ON)}; got {fail_on!r}")
    select = check_rules(select)
    ignore = check_rules(ignore)

    def wanted(f: Finding) -> bool:
        return (not select or f.rule in select) and f.rule not in ignore

    def live(f: Finding) -> None:
        if on_finding is not None and wanted(f):
            on_finding(f)

    main_globals = program.main_globals
    main_module = types.ModuleType("__main__")
    main_module.__dict__.update(main_globals)
    main_globals = main_module.__dict__

    saved_argv = sys.argv
    saved_path = list(sys.path)
    had_main = "__main__" in sys.modules
    saved_main = sys.modules.get("__main__")
    saved_hook = sys.excepthook
    saved_cwd = _getcwd()

    exception: BaseException | None = None
    exit_message: str | None = None
    status = 0
    interrupted = terminated = False
    w = watch(on_finding=live, skip=skip)
    sys.argv = [program.argv0, *args]
    sys.path.insert(0, program.path0)
    sys.modules["__main__"] = main_module
    try:
        with _stdout_to_stderr(stdout_to_stderr), _sigterm_stops_the_program():
            try:
                with w:
                    exec(program.code, main_globals)
            except SystemExit as exc:
                status, exit_message = _exit_status(exc)
            except KeyboardInterrupt as exc:
                exception, status, interrupted = exc, INTERRUPTED, True
            except Terminated:
                status, terminated = TERMINATED, True
            except BaseException as exc:  # the program's own failure, reported like Python does
                exception, status = exc, 1
            finally:
                _flush(sys.stdout)
    finally:
        if saved_cwd is not None and _getcwd() != saved_cwd:
            try:
                os.chdir(saved_cwd)
            except OSError:
                pass
        hook = sys.excepthook
        sys.excepthook = saved_hook
        sys.argv = saved_argv
        sys.path[:] = saved_path
        if had_main:
            sys.modules["__main__"] = saved_main  # type: ignore[assignment]
        else:
            sys.modules.pop("__main__", None)
    if exception is not None:
        _strip_machinery(exception, main_globals)

    report = w.build_report(script=program.display)
    if select or ignore:
        report = report.filtered(select=select, ignore=ignore)
    failing = failing_findings(report, fail_on)
    if interrupted:
        ended, error = INTERRUPTED_STATUS, "KeyboardInterrupt"
    elif terminated:
        ended, error = TERMINATED_STATUS, "SIGTERM"
    elif exception is not None:
        ended, error = SCRIPT_ERROR, report.error or f"{type(exception).__name__}: {exception}"
    elif status != 0:
        ended, error = SCRIPT_ERROR, f"SystemExit: {exit_message if exit_message is not None else status}"
    else:
        ended, error = (FINDINGS if failing else OK), None
    report = dataclasses.replace(report, status=ended, error=error)
    return RunResult(
        watch=w,
        report=report,
        script_status=status,
        exit_status=status if status != 0 else (findings_status if failing else 0),
        failing=failing,
        exception=exception,
        exit_message=exit_message,
        interrupted=interrupted,
        excepthook=hook,
        terminated=terminated,
    )


def failing_findings(report: Report, fail_on: str) -> tuple[Finding, ...]:
    """The findings at or above ``fail_on`` (``"error"``, ``"warning"`` or ``"never"``)."""
    if fail_on == "never":
        return ()
    limit = severity_rank(ERROR if fail_on == "error" else WARNING)
    return tuple(f for f in report.findings if severity_rank(f.severity) <= limit)


def _exit_status(exc: SystemExit) -> tuple[int, str | None]:
    """The status and message of ``sys.exit(code)``, as the interpreter turns them."""
    code = exc.code
    if code is None:
        return 0, None
    if isinstance(code, int):
        return code & 0xFF if code >= 0 else code % 256, None
    return 1, str(code)


def _getcwd() -> str | None:
    try:
        return os.getcwd()
    except OSError:
        return None


@contextmanager
def _sigterm_stops_the_program() -> Iterator[None]:
    """While the program runs, SIGTERM raises :class:`Terminated` in it instead of killing the
    process at once, so the lens can write the report of what ran. Only where SIGTERM has its
    default action (a handler of the program's own, or an ignored signal, stays as it is); a
    second SIGTERM ends the process at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    try:
        previous = signal.getsignal(signal.SIGTERM)
    except (AttributeError, ValueError):
        previous = None
    if previous != signal.SIG_DFL:
        yield
        return

    pid = os.getpid()

    def on_sigterm(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if os.getpid() != pid:  # a forked child (a DataLoader worker): end it as SIGTERM would
            os.kill(os.getpid(), signal.SIGTERM)
            return
        raise Terminated(signum)

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _flush(stream: Any) -> None:
    try:
        stream.flush()
    except Exception:
        pass


@contextmanager
def _stdout_to_stderr(enabled: bool) -> Iterator[None]:
    """Route standard output to standard error: the file descriptor when it is real, else ``sys.stdout``."""
    if not enabled:
        yield
        return
    _flush(sys.stdout)
    saved_fd: int | None = None
    try:
        if sys.stdout.fileno() == 1 and sys.stderr.fileno() == 2:
            saved_fd = os.dup(1)
            os.dup2(2, 1)
    except (AttributeError, OSError, ValueError):
        saved_fd = None
    saved_stdout, saved_stderr = sys.stdout, sys.stderr
    if saved_fd is None:
        sys.stdout = sys.stderr
    try:
        yield
    finally:
        _flush(sys.stdout)
        # the program may have replaced or closed sys.stdout: the report goes to the real one
        sys.stdout, sys.stderr = saved_stdout, saved_stderr
        if saved_fd is not None:
            os.dup2(saved_fd, 1)
            os.close(saved_fd)


# ----------------------------------------------------------------------------------------------
# tracebacks with the user's frames only
# ----------------------------------------------------------------------------------------------


def _in(tb: types.TracebackType, modules: tuple[str, ...]) -> bool:
    mod = tb.tb_frame.f_globals.get("__name__", "") or ""
    return any(mod == m or mod.startswith(m + ".") for m in modules)


def _is_machinery(tb: types.TracebackType) -> bool:
    return _in(tb, _MACHINERY)


def _is_lens(tb: types.TracebackType) -> bool:
    return _in(tb, ("autograd_lens",))


def _user_traceback(tb: types.TracebackType | None, main_globals: dict[str, Any]) -> types.TracebackType | None:
    entries: list[types.TracebackType] = []
    while tb is not None:
        entries.append(tb)
        tb = tb.tb_next
    if not entries:
        return None
    start = next((i for i, t in enumerate(entries) if t.tb_frame.f_globals is main_globals), None)
    if start is None:
        start = next((i for i, t in enumerate(entries) if not _is_machinery(t)), 0)
    entries = entries[start:]
    # the lens's frames between user code and torch are dropped; trailing ones (where the error was
    # raised) stay, so that a failure of the lens itself remains visible
    end = len(entries)
    while end > 0 and _is_lens(entries[end - 1]):
        end -= 1
    kept = [t for t in entries[:end] if not _is_lens(t)] + entries[end:]
    new: types.TracebackType | None = None
    for t in reversed(kept):
        new = types.TracebackType(new, t.tb_frame, t.tb_lasti, t.tb_lineno)
    return new


def _strip_machinery(exc: BaseException, main_globals: dict[str, Any]) -> None:
    """Drop the frames of the lens, runpy and click from the tracebacks of ``exc`` and its chain."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        try:
            e.__traceback__ = _user_traceback(e.__traceback__, main_globals)
        except Exception:
            pass
        todo.extend((e.__cause__, e.__context__))
        if isinstance(e, BaseExceptionGroup):
            todo.extend(e.exceptions)
