"""A griffe extension: read the project's docstrings the way Napoleon (Sphinx) reads them.

The docstrings are Google style with three habits Napoleon accepts and griffe's Google parser
does not, and this extension rewrites them before parsing:

- ``Example:`` (singular) is the same section as ``Examples:``, so doctests render as code
  instead of as nested block quotes;
- ``a, b: text`` in ``Args:`` / ``Attributes:`` documents several names at once (as in
  numpydoc); it becomes one entry per name;
- Sphinx roles (``:class:`~clipnormals.RetryPolicy```, ``:meth:`map```...) and reST literal
  blocks (a paragraph ending in ``::``) become Markdown: a cross-reference when the name is
  part of the documented public API, else a code span; a fenced code block.

Public names come from the ``__all__`` of the documented modules, so a role can only link to a
page that exists and the strict build stays meaningful.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
import sys
from pathlib import Path
from typing import Any

import griffe

PUBLIC_MODULES = ("clipnormals", "clipnormals.emulator", "clipnormals.redis", "clipnormals.testing")

_ROLE = re.compile(
    r":(?:py:)?(?:class|meth|func|attr|data|mod|obj|exc|const):`(~?)([\w.]+)(\(\))?`"
)
_EXAMPLE = re.compile(r"^(\s*)Example:\s*$", re.MULTILINE)
_SECTION = re.compile(r"^(\s*)(Args|Arguments|Parameters|Attributes):\s*$")
_MULTI_NAME = re.compile(r"^(\s+)(\w+(?:,\s*\w+)+):(.*)$")


def _public_names() -> dict[str, str]:
    """Canonical path (``clipnormals._core.limiter.RateLimit``) -> public path, for every class,
    function and constant of the public modules, and for the members of public classes."""
    if importlib.util.find_spec("clipnormals") is None:  # a checkout, not installed
        sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    table: dict[str, str] = {}
    for module_name in PUBLIC_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:  # an extra that is not installed: its names stay plain code
            continue
        for name in getattr(module, "__all__", ()):
            public = f"{module_name}.{name}"
            table[public] = public
            obj = getattr(module, name, None)
            qualname = getattr(obj, "__qualname__", None)
            owner = getattr(obj, "__module__", None)
            if isinstance(obj, type) and qualname and owner:
                table.setdefault(f"{owner}.{qualname}", public)
                for member in vars(obj):
                    if not member.startswith("_"):
                        table[f"{public}.{member}"] = f"{public}.{member}"
                        table.setdefault(f"{owner}.{qualname}.{member}", f"{public}.{member}")
            elif callable(obj) and qualname and owner:
                table.setdefault(f"{owner}.{qualname}", public)
    return table


class NapoleonDocstrings(griffe.Extension):
    """Rewrite every docstring before griffe parses it (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self._public = _public_names()
        self._by_last = _unique_last_components(self._public.values())

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = self.rewrite(obj.docstring.value, obj.path)

    def rewrite(self, text: str, context: str) -> str:
        text = _EXAMPLE.sub(r"\1Examples:", text)
        text = _split_multi_names(text)
        text = _literal_blocks(text)
        return _ROLE.sub(lambda m: self._role(m, context), text)

    def _role(self, match: re.Match[str], context: str) -> str:
        tilde, target, call = match.group(1), match.group(2), match.group(3) or ""
        shown = (target.rsplit(".", 1)[-1] if tilde else target) + call
        resolved = self._resolve(target, context)
        if resolved is None:
            return f"`{shown}`"
        return f"[`{shown}`][{resolved}]"

    def _resolve(self, target: str, context: str) -> str | None:
        if target in self._public:
            return self._public[target]
        # Relative to where the docstring lives, innermost scope first: a method of the same
        # class, a name of the same module.
        parts = context.split(".")
        for depth in range(len(parts), 0, -1):
            candidate = ".".join([*parts[:depth], target])
            if candidate in self._public:
                return self._public[candidate]
        return self._by_last.get(target)


def _unique_last_components(paths: Any) -> dict[str, str]:
    """``"RetryPolicy"`` -> ``"clipnormals.RetryPolicy"`` (and ``"AsyncClient.map"`` ->
    ``"clipnormals.AsyncClient.map"``), for names that mean one thing only."""
    seen: dict[str, set[str]] = {}
    for path in set(paths):
        parts = path.split(".")
        for size in (1, 2):
            if len(parts) > size:
                seen.setdefault(".".join(parts[-size:]), set()).add(path)
    return {short: next(iter(full)) for short, full in seen.items() if len(full) == 1}


def _split_multi_names(text: str) -> str:
    out: list[str] = []
    section_indent: int | None = None
    for line in text.splitlines():
        header = _SECTION.match(line)
        if header:
            section_indent = len(header.group(1))
            out.append(line)
            continue
        if section_indent is not None and line.strip():
            indent = len(line) - len(line.lstrip())
            if indent <= section_indent:
                section_indent = None
            else:
                multi = _MULTI_NAME.match(line)
                if multi:
                    names = [n.strip() for n in multi.group(2).split(",")]
                    out.extend(f"{multi.group(1)}{name}:{multi.group(3)}" for name in names)
                    continue
        out.append(line)
    return "\n".join(out)


def _language(block: list[str]) -> str:
    """``python`` when the block parses as Python (an example), else ``text`` (a diagram)."""
    indent = min(len(b) - len(b.lstrip()) for b in block if b.strip())
    try:
        source = "\n".join(b[indent:] for b in block)
        compile(source, "<docstring>", "exec", ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    except SyntaxError:
        return "text"
    return "python"


def _literal_blocks(text: str) -> str:
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.rstrip().endswith("::") and not line.strip().startswith(">>>"):
            base = len(line) - len(line.lstrip())
            j = i + 1
            while j < len(lines) and not lines[j].strip():
                j += 1
            block: list[str] = []
            while j < len(lines) and (
                not lines[j].strip() or len(lines[j]) - len(lines[j].lstrip()) > base
            ):
                block.append(lines[j])
                j += 1
            while block and not block[-1].strip():
                block.pop()
            if block:
                indent = min(len(b) - len(b.lstrip()) for b in block if b.strip())
                stripped = line.rstrip()[:-2].rstrip()
                out.append(f"{stripped}:" if stripped.strip() else stripped)
                out.append("")
                out.append(" " * base + "```" + _language(block))
                out.extend(" " * base + b[indent:] if b.strip() else "" for b in block)
                out.append(" " * base + "```")
                out.append("")
                i = j
                continue
        out.append(line)
        i += 1
    return "\n".join(out)
