"""How every command ends: an error is one clear line (plus a hint where one helps), not a
traceback, and the exit status is non-zero.

    if __name__ == "__main__":
      sys.exit(cli.run(main))          # main(argv) -> exit status

`--traceback` on the command line (or HOURJAX_TRACEBACK=1) shows the full trace instead. An
exception may carry a `hint` attribute (a string): it is printed on a second line.
"""
from __future__ import annotations

import os
import sys
from typing import Callable, Sequence

TRACEBACK_FLAG = "--traceback"
TRACEBACK_ENV = "HOURJAX_TRACEBACK"
MAX_CHARS = 2000         # a message longer than this (a library's dump) is cut, the trace has it all


def wants_traceback(argv: Sequence[str]) -> bool:
  return TRACEBACK_FLAG in argv or os.environ.get(TRACEBACK_ENV, "") not in ("", "0", "false", "no")


def one_line(error: BaseException) -> str:
  """`error` as one line: its message with newlines folded, after its type's name unless it is a
  ValueError or OSError (their messages name what is wrong: the field, the file)."""
  text = " ".join(str(error).split()) or repr(error)
  if len(text) > MAX_CHARS:
    text = text[:MAX_CHARS] + " ..."
  return text if isinstance(error, (ValueError, OSError)) else f"{type(error).__name__}: {text}"


def program_name(main: Callable) -> str:
  """`launch.train` for `python -m launch.train`, else the script's name."""
  module = main.__module__
  if module == "__main__":
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    module = spec.name if spec is not None else os.path.basename(sys.argv[0] if sys.argv else "hourjax")
  return module.removesuffix(".__main__")


def run(main: Callable[[list[str]], int | None], argv: Sequence[str] | None = None) -> int:
  """Calls `main(argv)` (default: sys.argv[1:] without --traceback); returns its status, or 1
  after printing the error as one line on stderr."""
  argv = list(sys.argv[1:] if argv is None else argv)
  show = wants_traceback(argv)
  argv = [a for a in argv if a != TRACEBACK_FLAG]
  if not show:
    return _guarded(main, argv)
  return int(main(argv) or 0)


def _guarded(main: Callable[[list[str]], int | None], argv: list[str]) -> int:
  prog = program_name(main)
  try:
    return int(main(argv) or 0)
  except KeyboardInterrupt:
    print(f"{prog}: interrupted", file=sys.stderr)
    return 130
  except Exception as e:          # every error, one line; --traceback has the rest
    print(f"{prog}: error: {one_line(e)} ({TRACEBACK_FLAG} or {TRACEBACK_ENV}=1 for the full trace)",
          file=sys.stderr, flush=True)
    hint = getattr(e, "hint", "")
    if isinstance(hint, str) and hint:
      print(f"{prog}: hint: {hint}", file=sys.stderr, flush=True)
    return 1


def writable_dir(path: str, what: str = "workdir") -> str:
  """Creates `path` if needed and proves a file can be written there, before any work is done:
  an unwritable directory is one clear error at start-up, not a flood from a background writer."""
  import socket
  probe = os.path.join(path, f".hourjax_write_probe.{socket.gethostname()}.{os.getpid()}")   # per process
  try:
    os.makedirs(path, exist_ok=True)
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    error = PermissionError(f"{what} {path!r} is not writable ({e.strerror or e})")
    error.hint = f"give a directory this user can write (e.g. --{what.replace('_', '-')} /tmp/run)"
    raise error from None
  return path
