"""Declaring labctl's commands and parsing their arguments, on the standard library's
argparse. A command is a function with decorators:

    @command()
    @argument("files", nargs=-1, required=True, type=PathArg())
    @option("--dry-run", is_flag=True, help="...")
    def apply(files, dry_run): ...

Its docstring is its help (lines after a `\\b` line are kept as written: examples).
Groups hold commands, some loaded only when named, so `labctl apply` imports nothing
that `labctl graph` needs. labctl keeps this layer instead of a CLI framework because
starting fast is part of every command's budget: this module and argparse load in
about 3 ms, a framework in 30 (`labctl apply` must answer within 100 ms).

Errors: a usage error prints the usage line and the error, exit 2; labctl's own errors
(LabctlError, UserError) are printed plainly with their exit codes; Ctrl-C exits 130.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence

TYPE_CHECKING = False  # typing.TYPE_CHECKING without typing's import: every labctl start
if TYPE_CHECKING:
    from typing import Any, NoReturn

HELP_WIDTH = 100


class UsageError(Exception):
    """Bad command-line input found after parsing: printed with the usage, exit 2."""


# ------------------------------------------------------------------ value types


class Choice:
    def __init__(self, choices: Sequence[str]) -> None:
        self.choices = list(choices)


class PathArg:
    """A file or folder; with exists=True (the default) it must exist."""

    def __init__(self, exists: bool = True) -> None:
        self.exists = exists

    def __call__(self, value: str) -> str:
        if self.exists and not os.path.exists(value):
            raise argparse.ArgumentTypeError(f"no such file or folder: {value!r}")
        return value


class Range:
    """A number within [lo, hi] (an open bound with lo_open: lo < value)."""

    def __init__(self, kind: type, lo: float | None = None, hi: float | None = None,
                 lo_open: bool = False) -> None:
        self.kind, self.lo, self.hi, self.lo_open = kind, lo, hi, lo_open
        self.__name__ = kind.__name__  # argparse names the type in its messages

    def __call__(self, text: str) -> Any:
        try:
            value = self.kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not {'an integer' if self.kind is int else 'a number'}"
            ) from None
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            raise argparse.ArgumentTypeError(
                f"{text} must be {'>' if self.lo_open else '≥'} {self.lo}")
        if self.hi is not None and value > self.hi:
            raise argparse.ArgumentTypeError(f"{text} must be ≤ {self.hi}")
        return value


def IntRange(lo: int | None = None, hi: int | None = None) -> Range:  # noqa: N802
    return Range(int, lo, hi)


def FloatRange(lo: float | None = None, hi: float | None = None,  # noqa: N802
               lo_open: bool = False) -> Range:
    return Range(float, lo, hi, lo_open)


# ------------------------------------------------------------------ parameters


class Argument:
    """A positional parameter. nargs=-1 takes all the rest (a tuple); `rest` also takes
    options the command does not know (`exec POD -- CMD -x`, `capture POD tcp -nn`).
    (Plain classes here, not dataclasses: their import would cost every start 8 ms.)"""

    def __init__(self, name: str, nargs: int = 1, required: bool = True, type: Any = None,
                 metavar: str | None = None, rest: bool = False) -> None:
        self.name, self.nargs, self.required = name, nargs, required
        self.type, self.metavar, self.rest = type, metavar, rest

    @property
    def shown(self) -> str:
        """Its name in usage lines: argparse adds the brackets and dots itself."""
        if self.metavar:
            return self.metavar.strip("[]").replace("...", "")
        return self.name.upper()


class Option:
    def __init__(self, flags: list[str], dest: str, is_flag: bool = False,
                 flag_value: str | None = None, negation: str | None = None,
                 multiple: bool = False, required: bool = False, type: Any = None,
                 default: Any = None, show_default: bool = False, help: str = "",
                 metavar: str | None = None) -> None:
        self.flags, self.dest, self.is_flag = flags, dest, is_flag
        self.flag_value = flag_value  # several flags setting one dest (--readiness/--crash)
        self.negation = negation  # "--no-wait" of "--wait/--no-wait"
        self.multiple, self.required, self.type = multiple, required, type
        self.default, self.show_default, self.help = default, show_default, help
        self.metavar = metavar

    @property
    def takes_value(self) -> bool:
        return not self.is_flag and self.flag_value is None and self.negation is None


Param = Argument | Option


def _metavar(o: Option) -> str:
    if isinstance(o.type, Choice):
        return "{" + ",".join(o.type.choices) + "}"
    if isinstance(o.type, PathArg):
        return "PATH"
    if o.type is int or (isinstance(o.type, Range) and o.type.kind is int):
        return "N"
    if o.type is float or isinstance(o.type, Range):
        return "SECONDS" if "time" in o.dest or "grace" in o.dest else "NUMBER"
    return {"lab_name": "LAB", "namespace": "NAMESPACE"}.get(o.dest, o.dest.upper())


def _params(fn: Callable[..., Any]) -> list[Param]:
    found: list[Param] = fn.__dict__.setdefault("__cli_params__", [])
    return found


def argument(name: str, nargs: int = 1, required: bool | None = None, type: Any = None,
             metavar: str | None = None, rest: bool = False) -> Callable[[Any], Any]:
    def deco(fn: Any) -> Any:
        needed = required if required is not None else nargs == 1
        _params(fn).insert(0, Argument(name, nargs, needed, type, metavar, rest))
        return fn
    return deco


def option(*decls: str, is_flag: bool = False, flag_value: str | None = None,
           multiple: bool = False, required: bool = False, type: Any = None,
           default: Any = None, show_default: bool = False, help: str = "",
           metavar: str | None = None) -> Callable[[Any], Any]:
    """`option("-f", "--filename", "files", ...)`: flags, then optionally the name of
    the function's parameter (else the long flag's). "--wait/--no-wait" is a switch."""
    flags = [d for d in decls if d.startswith("-")]
    named = [d for d in decls if not d.startswith("-")]
    negation = None
    if "/" in flags[-1]:
        flags[-1], negation = flags[-1].split("/")
    longest = max(flags, key=len)
    dest = named[0] if named else longest.lstrip("-").replace("-", "_")

    def deco(fn: Any) -> Any:
        _params(fn).insert(0, Option(flags, dest, is_flag, flag_value, negation, multiple,
                                     required, type, default, show_default, help, metavar))
        return fn
    return deco


# ------------------------------------------------------------------ commands


def _help_text(doc: str | None) -> str:
    """A docstring as help: dedented; a `\\b` line (kept-as-written marker) dropped."""
    lines = (doc or "").expandtabs().strip().splitlines()
    if not lines:
        return ""
    indents = [len(line) - len(line.lstrip()) for line in lines[1:] if line.strip()]
    cut = min(indents, default=0)
    kept = [lines[0].strip(), *(line[cut:].rstrip() for line in lines[1:])]
    return "\n".join(line for line in kept if line.strip() != "\b")


def _first_sentence(text: str) -> str:
    para = " ".join(text.split("\n\n")[0].split())
    cut = para.find(". ")
    short = para if cut < 0 else para[:cut + 1]
    if len(short) <= 80:
        return short
    return short[:77].rpartition(" ")[0].rstrip(",;:") + "..."


class _Formatter(argparse.RawDescriptionHelpFormatter):
    width = 0  # the terminal's, up to HELP_WIDTH; asked once (argparse makes many)

    def __init__(self, prog: str) -> None:
        if not _Formatter.width:  # as shutil.get_terminal_size, without its import
            try:
                columns = int(os.environ.get("COLUMNS", "")) or os.get_terminal_size(
                    sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
            except (ValueError, OSError, AttributeError):
                columns = HELP_WIDTH
            _Formatter.width = min(HELP_WIDTH, columns)
        super().__init__(prog, width=_Formatter.width, max_help_position=32)

    def _format_action_invocation(self, action: argparse.Action) -> str:
        """`-f, --filename PATH` (argparse's own repeats the metavar per flag)."""
        if not action.option_strings or action.nargs == 0:
            return super()._format_action_invocation(action)
        return f"{', '.join(action.option_strings)} {action.metavar}"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"error: {message}\n"
                     f"hint: `{self.prog} --help` lists the arguments and options\n")


class Command:
    def __init__(self, fn: Callable[..., Any], name: str, short_help: str | None = None
                 ) -> None:
        self.fn = fn
        self.name = name
        self.params: list[Param] = list(_params(fn))
        self._short_help = short_help

    @property
    def help(self) -> str:
        return _help_text(self.fn.__doc__)

    @property
    def short_help(self) -> str:
        return self._short_help or _first_sentence(self.help)

    # -- parsing

    def parser(self, prog: str) -> argparse.ArgumentParser:
        p = _Parser(prog=prog, description=self.help, formatter_class=_Formatter,
                    allow_abbrev=False, add_help=False)
        p.add_argument("-h", "--help", action="help", help="Show this help and exit.")
        for param in self.params:
            if isinstance(param, Argument):
                nargs = {(1, True): None, (1, False): "?", (-1, True): "+",
                         (-1, False): "*"}[param.nargs, param.required and not param.rest]
                p.add_argument(param.name, nargs=nargs, metavar=param.shown,
                               **self._typing(param.type))
            else:
                self._add_option(p, param)
        return p

    @staticmethod
    def _typing(kind: Any) -> dict[str, Any]:
        if isinstance(kind, Choice):
            return {"choices": kind.choices}
        return {"type": kind} if kind is not None else {}

    @staticmethod
    def _add_option(p: argparse.ArgumentParser, o: Option) -> None:
        text = o.help
        if o.show_default and o.default is not None:
            shown = ("--" + o.flags[-1].lstrip("-")) if o.negation and o.default else (
                o.negation if o.negation else o.default)
            text = f"{text} (default: {shown})".strip()
        kw: dict[str, Any] = {"dest": o.dest, "help": text or None}
        if o.negation:
            p.add_argument(*o.flags, action="store_true", **kw)
            p.add_argument(o.negation, dest=o.dest, action="store_false",
                           help=argparse.SUPPRESS)
            p.set_defaults(**{o.dest: o.default})
            return
        if o.flag_value is not None:
            p.add_argument(*o.flags, action="store_const", const=o.flag_value, **kw)
            return
        if o.is_flag:
            p.add_argument(*o.flags, action="store_true", **kw)
            return
        kw.update(Command._typing(o.type))
        metavar = o.metavar or _metavar(o)
        p.add_argument(*o.flags, action="append" if o.multiple else "store",
                       required=o.required, metavar=metavar,
                       default=None if o.multiple else o.default, **kw)

    def parse(self, args: Sequence[str], prog: str) -> dict[str, Any]:
        p = self.parser(prog)
        rest = next((a for a in self.params if isinstance(a, Argument) and a.rest), None)
        if rest is None:
            ns = p.parse_args(list(args))
        else:  # unknown options belong to `rest`; after `--`, everything does
            head, tail = list(args), []
            if "--" in head:
                cut = head.index("--")
                head, tail = head[:cut], head[cut + 1:]
            ns, extra = p.parse_known_args(head)
            setattr(ns, rest.name, [*(getattr(ns, rest.name) or []), *extra, *tail])
            if rest.required and not getattr(ns, rest.name):
                p.error(f"the following arguments are required: {rest.shown}")
        values = vars(ns)
        for param in self.params:
            key = param.name if isinstance(param, Argument) else param.dest
            if (isinstance(param, Argument) and param.nargs == -1) or (
                    isinstance(param, Option) and param.multiple):
                values[key] = tuple(values.get(key) or ())
        return values

    # -- running

    def main(self, args: Sequence[str], prog: str) -> None:
        values = self.parse(args, prog)
        try:
            self.fn(**values)
        except UsageError as exc:
            self.parser(prog).error(str(exc))

    def walk(self, path: str) -> list[tuple[str, Command]]:
        return [(path, self)]


class Group(Command):
    """A command holding commands: `labctl proxy render`. `lazy` maps a name to
    "module:attribute", imported only when that command runs (or help lists them)."""

    def __init__(self, fn: Callable[..., Any], name: str, short_help: str | None = None,
                 lazy: dict[str, str] | None = None, version_of: str | None = None) -> None:
        super().__init__(fn, name, short_help)
        self.commands: dict[str, Command] = {}
        self.lazy = dict(lazy or {})
        self.version_of = version_of

    def command(self, name: str | None = None, short_help: str | None = None
                ) -> Callable[[Callable[..., Any]], Command]:
        def deco(fn: Callable[..., Any]) -> Command:
            cmd = command(name, short_help)(fn)
            self.commands[cmd.name] = cmd
            return cmd
        return deco

    def get(self, name: str) -> Command | None:
        if name not in self.commands and name in self.lazy:
            module, _, attr = self.lazy[name].partition(":")
            self.commands[name] = getattr(importlib.import_module(module), attr)
        return self.commands.get(name)

    def names(self) -> list[str]:
        return sorted({*self.commands, *self.lazy})

    def format_help(self, prog: str) -> str:
        rows = [(n, c.short_help) for n in self.names() if (c := self.get(n))]
        width = max(len(n) for n, _ in rows) + 2
        opts = ["  -h, --help   Show this help and exit."]
        if self.version_of:
            opts.append("  --version    Show the version and exit.")
        return (f"usage: {prog} [OPTIONS] COMMAND [ARGS]...\n\n{self.help}\n\n"
                "options:\n" + "\n".join(opts) + "\n\ncommands:\n"
                + "\n".join(f"  {n:<{width}}{h}" for n, h in rows)
                + f"\n\n`{prog} COMMAND --help` shows a command's arguments and options.\n")

    def main(self, args: Sequence[str], prog: str) -> None:
        if not args or args[0] in ("-h", "--help"):
            sys.stdout.write(self.format_help(prog))
            sys.exit(0 if args else 2)
        if args[0] == "--version" and self.version_of:
            from importlib.metadata import version

            print(f"{prog}, version {version(self.version_of)}")
            sys.exit(0)
        name, rest = args[0], args[1:]
        sub = self.get(name) if not name.startswith("-") else None
        if sub is None:
            import difflib

            near = difflib.get_close_matches(name, self.names(), n=1)
            what = "option" if name.startswith("-") else "command"
            sys.stderr.write(f"usage: {prog} [OPTIONS] COMMAND [ARGS]...\n"
                             f"error: no such {what}: {name!r}\n" + (
                                 f"hint: did you mean {near[0]!r}?\n" if near else
                                 f"hint: `{prog} --help` lists the commands\n"))
            sys.exit(2)
        sub.main(rest, f"{prog} {name}")

    def walk(self, path: str) -> list[tuple[str, Command]]:
        found: list[tuple[str, Command]] = [(path, self)]
        for n in self.names():
            sub = self.get(n)
            if sub is not None:
                found += sub.walk(f"{path} {n}".strip())
        return found


def command(name: str | None = None, short_help: str | None = None
            ) -> Callable[[Callable[..., Any]], Command]:
    """A command from a function; its name is the function's, `_` as `-` and a trailing
    `_` (a Python keyword: `break_`) dropped."""
    def deco(fn: Callable[..., Any]) -> Command:
        return Command(_handled(fn), name or fn.__name__.rstrip("_").replace("_", "-"),
                       short_help)
    return deco


def group(name: str | None = None, lazy: dict[str, str] | None = None,
          version_of: str | None = None) -> Callable[[Callable[..., Any]], Group]:
    def deco(fn: Callable[..., Any]) -> Group:
        return Group(fn, name or fn.__name__.rstrip("_"), lazy=lazy, version_of=version_of)
    return deco


def _handled(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Print labctl's errors plainly (no traceback) and exit with their code."""
    import functools

    @functools.wraps(fn)
    def wrapper(**kwargs: Any) -> Any:
        from labctl.errors import LabctlError, UserError

        try:
            return fn(**kwargs)
        except UserError as exc:
            sys.stderr.write(exc.format() + "\n")
            sys.exit(exc.exit_code)
        except LabctlError as exc:
            sys.stderr.write(f"error: {exc}\n")
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            sys.stderr.write("interrupted\n")
            sys.exit(130)
        except BrokenPipeError:  # `labctl ... | head`: the reader is gone, not an error
            sys.stderr.close()
            sys.exit(0)

    return wrapper


# ------------------------------------------------------------------ in-process runs


class Invocation:
    def __init__(self, exit_code: int, stdout: str, stderr: str) -> None:
        self.exit_code, self.stdout, self.stderr = exit_code, stdout, stderr
        self.output = stdout + stderr  # as a terminal would mix them

    def __repr__(self) -> str:
        return f"Invocation(exit_code={self.exit_code}, output={self.output!r})"


def invoke(cmd: Command, args: Sequence[str], prog: str = "labctl") -> Invocation:
    """Run `cmd` with `args` in this process and capture what it prints and its exit
    code (labctl's own tests; a Python program driving labctl)."""
    import contextlib
    import io

    raw_out, raw_err = io.BytesIO(), io.BytesIO()
    out = io.TextIOWrapper(raw_out, encoding="utf-8", write_through=True)  # has .buffer
    errs = io.TextIOWrapper(raw_err, encoding="utf-8", write_through=True)
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(errs):
        try:
            cmd.main(list(args), prog)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            if isinstance(exc.code, str):
                errs.write(exc.code + "\n")
    stdout, stderr = (b.getvalue().decode(errors="replace") for b in (raw_out, raw_err))
    return Invocation(code, stdout, stderr)
