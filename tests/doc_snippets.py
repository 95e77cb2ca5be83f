"""Commands and inline code of README.md and docs/*.md, as written (tests/doc_commands.py
checks them)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_LANGS = {"bash", "sh", "shell", "console", "zsh"}


@dataclass(frozen=True)
class Snippet:
    where: str   # file:line
    text: str    # as written
    kind: str    # "command" (a fenced command) | "inline" (inline code in prose)

    def __str__(self) -> str:
        return f"{self.where}: {self.text}"


def _join_continuations(lines: list[tuple[int, str]]) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    buf, start = "", 0
    for number, line in lines:
        if not buf:
            start = number
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        out.append((start, buf + line))
        buf = ""
    if buf:
        out.append((start, buf))
    return out


def extract(path: Path) -> tuple[list[Snippet], list[str]]:
    """(snippets, problems) of one markdown file: fenced shell commands, inline code spans,
    and the fences without a language / placeholders left in the text."""
    rel = path.relative_to(ROOT)
    snippets: list[Snippet] = []
    problems: list[str] = []
    fence: str | None = None
    lang, block = "", []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        marker = re.match(r"^\s*(```+|~~~+)\s*([\w+-]*)", line)
        if fence is None and marker:
            fence, lang, block = marker.group(1), marker.group(2).lower(), []
            if not lang:
                problems.append(f"{rel}:{number}: fence without a language: label it "
                                "(```bash for commands, ```text otherwise)")
            continue
        if fence is not None:
            if line.strip().startswith(fence):
                if lang in SHELL_LANGS:
                    for start, cmd in _join_continuations(block):
                        if cmd.strip() and not cmd.lstrip().startswith("#"):
                            snippets.append(Snippet(f"{rel}:{start}", cmd.strip(), "command"))
                fence = None
            else:
                block.append((number, line))
            continue
        if re.search(r"_TBD_|\bTBD\b|\bTODO\b|\bFIXME\b", line):
            problems.append(f"{rel}:{number}: placeholder left in the text: {line.strip()[:80]}")
        for span in re.findall(r"(?<!`)`([^`\n]+)`(?!`)", line):
            snippets.append(Snippet(f"{rel}:{number}", span.strip(), "inline"))
        for target in re.findall(r"\]\(([^)\s]+)\)", line):
            target = target.split("#")[0]
            if target and not re.match(r"^[a-z]+:", target) and not (path.parent / target).exists():
                problems.append(f"{rel}:{number}: broken link ({target})")
    return snippets, problems


SNIPPETS: list[Snippet] = []
PROBLEMS: list[str] = []
for _doc in DOCS:
    _s, _p = extract(_doc)
    SNIPPETS += _s
    PROBLEMS += _p
