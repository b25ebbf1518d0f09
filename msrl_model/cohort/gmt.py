"""Gene-set files in the MSigDB ``.gmt`` format.

One gene set per line, tab-separated: ``name<TAB>description<TAB>gene1<TAB>gene2 ...``. The
description is free text (MSigDB puts a URL there). Blank lines are skipped. Gene symbols are kept as
written; a gene listed twice in one set is kept once (first occurrence).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from msrl_model.errors import CohortError


@dataclass(frozen=True)
class GeneSet:
    """One line of a ``.gmt`` file."""

    name: str  # e.g. HALLMARK_HYPOXIA
    description: str  # free text (MSigDB: a URL)
    genes: tuple[str, ...]  # gene symbols in file order, without duplicates


def parse_gmt(text: str, source: str = "<gmt>") -> tuple[list[GeneSet], list[str]]:
    """Parse ``.gmt`` text into gene sets and a list of problems (``source line N: ...``).

    Problems are lines with fewer than three fields, sets without genes and repeated set names;
    such lines are skipped so that every problem can be reported at once.
    """
    sets: list[GeneSet] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = [f.strip() for f in line.rstrip("\r\n").split("\t")]
        if len(fields) < 2 or not fields[0]:
            problems.append(f"{source} line {lineno}: expected 'name<TAB>description<TAB>genes...', "
                            f"got {line[:60]!r}")
            continue
        name, description = fields[0], fields[1]
        genes = tuple(dict.fromkeys(g for g in fields[2:] if g))
        if not genes:
            problems.append(f"{source} line {lineno}: gene set {name} lists no genes")
            continue
        if name in seen:
            problems.append(f"{source} line {lineno}: gene set {name} repeats line {seen[name]}")
            continue
        seen[name] = lineno
        sets.append(GeneSet(name, description, genes))
    if not sets and not problems:
        problems.append(f"{source}: no gene sets found")
    return sets, problems


def read_gmt(path: str | Path) -> list[GeneSet]:
    """Read a ``.gmt`` file; raises :class:`CohortError` listing every malformed line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise CohortError(f"cannot read gene-set file {path}: {exc.strerror or exc}; "
                          "check the path and permissions") from exc
    sets, problems = parse_gmt(text, source=path.name)
    if problems:
        raise CohortError(f"gene-set file {path} has {len(problems)} problem(s): "
                          + "; ".join(problems[:10]) + ("; ..." if len(problems) > 10 else ""))
    return sets


def write_gmt(path: str | Path, sets: Sequence[GeneSet] | Mapping[str, Sequence[str]],
              description: str = "") -> Path:
    """Write gene sets as ``.gmt``; a mapping ``name -> genes`` gets ``description`` on every line."""
    path = Path(path)
    if isinstance(sets, Mapping):
        sets = [GeneSet(name, description, tuple(genes)) for name, genes in sets.items()]
    lines = []
    for s in sets:
        for text in (s.name, s.description, *s.genes):
            if "\t" in text or "\n" in text:
                raise ValueError(f"gene set {s.name!r}: tabs and newlines are not allowed in {text!r}")
        lines.append("\t".join((s.name, s.description, *s.genes)))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
