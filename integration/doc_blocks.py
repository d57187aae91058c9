"""The shell blocks of the Markdown docs and what `integration/test_docs.py` does with each.

Every fenced ```sh, ```bash or ```console block in a tested doc is preceded by one marker, an HTML
comment that readers of the rendered page do not see:

    <!-- doc-test: run -->                        run every command, in order, in the doc's shell
    <!-- doc-test: run retry -->                  the same; a command whose output differs from the
                                                  block's is retried for RETRY_SECONDS (the promise
                                                  is "within" some time: a revocation's poll)
    <!-- doc-test: skip reason="..." -->          not run, and the reason says why

A block without a marker, or with another one, fails the test: a new command in a doc is either
run or skipped on purpose.

Inside a block, a command is one line, or several joined by a trailing backslash. In ```sh and
```bash blocks every line is a command (comments included, which the shell ignores). In
```console blocks a command starts with `$ ` and the lines that follow it, up to the next `$ `,
are its expected output: each must appear, in order, in what the command printed (stdout, then
stderr), where `…` stands for any text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

SHELL_LANGUAGES = ("sh", "bash", "console")
MARKER = re.compile(r"^<!--\s*doc-test:\s*(?P<body>.*?)\s*-->\s*$")
FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>[\w+-]*)\s*$")
RETRY_SECONDS = 10.0


@dataclass
class Command:
    text: str  # the command as the shell gets it (continuation lines joined)
    expected: list[str] = field(default_factory=list)  # console blocks: the lines it must print
    line: int = 0  # where it starts in the doc (1-based)


@dataclass
class Block:
    doc: Path
    line: int  # the opening fence (1-based)
    lang: str
    lines: list[str]
    marker: Optional[str]  # the marker's body ("run", "skip reason=...") or None

    @property
    def where(self) -> str:
        return f"{self.doc.name}:{self.line}"

    @property
    def action(self) -> Optional[str]:
        """`run` or `skip`; None for a missing or unknown marker."""
        if self.marker is None:
            return None
        words = self.marker.split()
        if words and words[0] == "run" and set(words[1:]) <= {"retry"}:
            return "run"
        if words and words[0] == "skip" and self.skip_reason:
            return "skip"
        return None

    @property
    def retry(self) -> bool:
        return self.action == "run" and "retry" in self.marker.split()[1:]

    @property
    def skip_reason(self) -> Optional[str]:
        found = re.fullmatch(r'skip\s+reason="(?P<reason>[^"]+)"', self.marker or "")
        return found.group("reason") if found else None

    def commands(self) -> list[Command]:
        return console_commands(self) if self.lang == "console" else shell_commands(self)


def blocks(doc: Path, languages: tuple[str, ...] = SHELL_LANGUAGES) -> list[Block]:
    """The fenced blocks of `doc` in those languages, each with the marker right before it (blank
    lines between the two are allowed)."""
    found = []
    lines = doc.read_text().splitlines()
    index = 0
    while index < len(lines):
        fence = FENCE.match(lines[index])
        if not fence:
            index += 1
            continue
        start = index
        end = start + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        lang = fence.group("lang")
        if lang in languages:
            found.append(Block(doc, start + 1, lang, lines[start + 1:end], marker_before(lines, start)))
        index = end + 1
    return found


def marker_before(lines: list[str], fence_index: int) -> Optional[str]:
    index = fence_index - 1
    while index >= 0 and not lines[index].strip():
        index -= 1
    found = MARKER.match(lines[index].strip()) if index >= 0 else None
    return found.group("body") if found else None


def _joined(lines: list[str], first: int) -> tuple[str, int]:
    """The command starting at lines[first], with its backslash continuations; and the index
    after it."""
    parts = [lines[first]]
    index = first
    while parts[-1].rstrip().endswith("\\") and index + 1 < len(lines):
        index += 1
        parts.append(lines[index])
    return "\n".join(parts), index + 1


def shell_commands(block: Block) -> list[Command]:
    commands = []
    index = 0
    while index < len(block.lines):
        if not block.lines[index].strip() or block.lines[index].lstrip().startswith("#"):
            index += 1
            continue
        text, after = _joined(block.lines, index)
        commands.append(Command(text, line=block.line + 1 + index))
        index = after
    return commands


def console_commands(block: Block) -> list[Command]:
    commands: list[Command] = []
    index = 0
    while index < len(block.lines):
        line = block.lines[index]
        if line.startswith("$ "):
            start = index
            text, index = _joined(block.lines, index)
            commands.append(Command(text[2:], line=block.line + 1 + start))
            continue
        if not commands:
            raise ValueError(f"{block.where}: output before the first `$ ` command: {line!r}")
        if line.strip():
            commands[-1].expected.append(line)
        index += 1
    return commands


def output_matches(expected: list[str], printed: str) -> bool:
    """Every expected line matches a printed line, in order (`…` is any text)."""
    printed_lines = printed.splitlines()
    position = 0
    for want in expected:
        pattern = re.compile(".*".join(re.escape(part) for part in want.strip().split("…")))
        while position < len(printed_lines) and not pattern.fullmatch(printed_lines[position].strip()):
            position += 1
        if position == len(printed_lines):
            return False
        position += 1
    return True


# -- figures -------------------------------------------------------------------------------------

# A figure: a number with a unit of time, size or ratio, in prose or a table (code is not prose).
FIGURE = re.compile(
    r"(?<![\w.])~?\d+(?:[.,]\d+)*(?:\s*(?:to|–)\s*\d+(?:\.\d+)?)?\s?"
    r"(?:µs|ms|s|seconds?|minutes?|min|h|hours?|KB|MB|GB|KiB|MiB|GiB|bytes?|×|%)(?![\w])"
)
# Where a measured figure comes from: a results file, the benchmark or scale reports, the
# command that measures it, or the test that exercised it.
SOURCE = re.compile(
    r"bench/results/|bench/README\.md|(?:docs/)?scale\.md|native\.md#numbers|"
    r"`make (?:bench|scale|soak|scale-native|soak-native|fuzz)`|integration/test_\w+\.py|tests/\w+\.rs|"
    r"measured with `[^`]+`\s+after\s+`make \w+`\s+at\s+git\s+[0-9a-f]{7}"
)
# A figure in a sentence with one of these is a setting or a bound the code enforces (a default,
# a limit, a target), not a measurement.
SETTING = re.compile(
    r"\b(?:default|defaults|at least|at most|up to|limit|bounded|target|ahead|over|grace|retried|"
    r"histogram|random|expire|expires|lifetime|claims|window|windows|drain|answers within)\b|"
    r"\bevery ~?\d",  # a period: "every 250 ms"
    re.IGNORECASE,
)


@dataclass
class Figure:
    doc: Path
    line: int
    text: str
    context: str  # the sentence it is in


def paragraphs(doc: Path) -> list[tuple[int, str]]:
    """Prose paragraphs and tables (code spans blanked, fenced blocks and markers left out), each
    with its first line; a table is joined to the paragraph that introduces it."""
    out: list[tuple[int, list[str]]] = []
    current: list[str] = []
    start = 0
    in_fence = False
    previous_was_prose = False
    for number, line in enumerate(doc.read_text().splitlines(), 1):
        if FENCE.match(line):
            in_fence = not in_fence
            line = ""
        if in_fence or MARKER.match(line.strip()):
            line = ""
        if not line.strip():
            if current:
                out.append((start, current))
                previous_was_prose = not current[0].lstrip().startswith("|")
            current = []
            continue
        if not current:
            start = number
            if line.lstrip().startswith("|") and previous_was_prose and out:
                # the table belongs with the paragraph above it
                start, current = out.pop()
                current = current + [""]
        current.append(line)
    if current:
        out.append((start, current))
    return [(start, "\n".join(lines)) for start, lines in out]


def figures_without_source(doc: Path) -> list[Figure]:
    """Figures in paragraphs (or tables with their introduction) that name no source, outside
    sentences that state a setting."""
    missing = []
    for start, paragraph in paragraphs(doc):
        if SOURCE.search(paragraph):
            continue
        prose = re.sub(r"`[^`\n]*`", "``", paragraph)
        rows = [line for line in prose.split("\n") if line.lstrip().startswith("|")]
        if rows and SETTING.search(rows[0]):
            rows = []  # a table of settings: its header says "default", "limit"...
        text = " ".join(line.strip() for line in prose.split("\n") if not line.lstrip().startswith("|"))
        for unit in [text, *rows]:
            for sentence in re.split(r"(?<=[.;])\s+(?=[A-Z(`])|\s*\|\s*", unit):
                if SETTING.search(sentence):
                    continue
                for found in FIGURE.finditer(sentence):
                    missing.append(Figure(doc, start, found.group(0), sentence.strip()))
    return missing
