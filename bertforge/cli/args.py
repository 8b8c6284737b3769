"""The one layer that checks every CLI's flags: numbers and output paths, right after parsing.

Every entry point builds its parser with :class:`ArgumentParser` (argparse's, plus these
rules) and declares its ranges and outputs in one call::

    p.check(limits={"train_batch_size": ">=1", "warmup_proportion": "[0,1)"},
            outputs={"output_dir": "dir", "json_summary": "file"})

After parsing, with no flag left out:

* every number must be finite (``nan``, ``inf`` are refused) and every whole number must
  fit in 64 bits (``--seed 2**70``), whatever the flag's type function;
* ``limits`` give a flag's interval: ``">=1"``, ``">0"``, ``"<=100"``, ``"[0,1)"``,
  ``"(0,1]"``, ``"[1,65536]"`` (lists of numbers are checked element by element); a
  default of ``None`` or the flag's own default is never refused;
* ``outputs`` (``"dir"`` or ``"file"``) are checked by
  :func:`bertforge.outputs.check_output_path`: writable, a folder where a folder is
  wanted, names the file system accepts; nothing is created.

A refusal is argparse's own: the usage line, then ``prog: error: argument --flag: ...``,
exit status 2, before any data or model is touched.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Iterable

__all__ = ["ArgumentParser", "Interval", "INT64_MIN", "INT64_MAX"]

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

_CMP = re.compile(r"^\s*(>=|>|<=|<)\s*(\S+)\s*$")
_INTERVAL = re.compile(r"^\s*([\[(])\s*(\S+)\s*,\s*(\S+)\s*([\])])\s*$")


class Interval:
    """A closed, open or half-open interval parsed from ``">=1"`` or ``"[0,1)"`` notation."""

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self.lo = self.hi = None
        self.lo_open = self.hi_open = False
        m = _CMP.match(spec)
        if m:
            op, v = m.group(1), float(m.group(2))
            if op[0] == ">":
                self.lo, self.lo_open = v, op == ">"
            else:
                self.hi, self.hi_open = v, op == "<"
            return
        m = _INTERVAL.match(spec)
        if not m:
            raise ValueError(f"bad interval {spec!r}")
        self.lo_open, self.hi_open = m.group(1) == "(", m.group(4) == ")"
        self.lo = None if m.group(2) in ("-inf", "") else float(m.group(2))
        self.hi = None if m.group(3) in ("inf", "") else float(m.group(3))

    def __contains__(self, v: float) -> bool:
        if self.lo is not None and (v < self.lo or (self.lo_open and v == self.lo)):
            return False
        return not (self.hi is not None and (v > self.hi or (self.hi_open and v == self.hi)))

    def describe(self) -> str:
        def num(x: float) -> str:
            return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"

        if self.hi is None and self.lo is not None:
            return f"{'>' if self.lo_open else '>='} {num(self.lo)}"
        if self.lo is None and self.hi is not None:
            return f"{'<' if self.hi_open else '<='} {num(self.hi)}"
        return (f"in {'(' if self.lo_open else '['}{num(self.lo)}, {num(self.hi)}"
                f"{')' if self.hi_open else ']'}")


def _numbers(v) -> Iterable:
    if isinstance(v, (list, tuple)):
        for x in v:
            yield from _numbers(x)
    elif isinstance(v, (int, float)) and not isinstance(v, bool):
        yield v


class ArgumentParser(argparse.ArgumentParser):
    """argparse that checks numbers and output paths after parsing (see the module doc)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._limits: dict[str, Interval] = {}
        self._outputs: dict[str, str] = {}

    def check(self, *, limits: dict[str, str] | None = None,
              outputs: dict[str, str] | None = None) -> ArgumentParser:
        """Declare flag intervals (dest -> spec) and output paths (dest -> "dir"/"file")."""
        dests = {a.dest for a in self._actions}
        for name in [*(limits or {}), *(outputs or {})]:
            if name not in dests:
                raise ValueError(f"{self.prog}: no flag with dest {name!r}")
        for name, spec in (limits or {}).items():
            self._limits[name] = Interval(spec)
        for name, kind in (outputs or {}).items():
            if kind not in ("dir", "file"):
                raise ValueError(f"output kind must be 'dir' or 'file', got {kind!r}")
            self._outputs[name] = kind
        return self

    def _flag(self, dest: str) -> str:
        for a in self._actions:
            if a.dest == dest:
                return "/".join(a.option_strings) if a.option_strings else a.dest
        return dest

    def parse_known_args(self, args=None, namespace=None):
        ns, rest = super().parse_known_args(args, namespace)
        defaults = {a.dest: a.default for a in self._actions}
        for dest, value in vars(ns).items():
            if value is None or dest not in defaults:
                continue
            for v in _numbers(value):
                if isinstance(v, float) and not math.isfinite(v):
                    self.error(f"argument {self._flag(dest)}: must be a finite number, got {v}")
                if isinstance(v, int) and not INT64_MIN <= v <= INT64_MAX:
                    self.error(f"argument {self._flag(dest)}: {v} does not fit in 64 bits")
            interval = self._limits.get(dest)
            if interval is not None and value != defaults[dest]:
                for v in _numbers(value):
                    if v not in interval:
                        self.error(f"argument {self._flag(dest)}: must be {interval.describe()}, "
                                   f"got {v}")
        if self._outputs:
            from bertforge.errors import UserError
            from bertforge.outputs import check_output_path

            for dest, kind in self._outputs.items():
                value = getattr(ns, dest, None)
                if value is None:
                    continue
                try:
                    check_output_path(value, self._flag(dest).split("/")[0], kind)
                except UserError as e:
                    self.error(f"argument {str(e)}")
        return ns, rest
