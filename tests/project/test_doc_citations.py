"""Every doc the project cites is in the project: `docs/<file>.md`, with `section N` or
`#anchor` where given, and the benchmark pages `benchmarks/RESULTS.md` and
`benchmarks/results/<page>.md`, with `#anchor` where given, resolve inside this repository,
and nothing points outside it.

Reads only the repository, so it passes in a clone with nothing beside it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Where citations live: code, tests, benchmarks, the docs and the project's own files.
FOLDERS = ("stepjepa", "pipelines", "tests", "benchmarks", "docs", "docker", "configs")
FILES = ("README.md", "Makefile", "pyproject.toml", "params.yaml", "dvc.yaml")
SUFFIXES = {".py", ".md", ".toml", ".yaml", ".yml", ".txt", ".cfg", ".sh"}

# `docs/step-jepa.md section 3`, `sections 3 and 5`, `docs/step-jepa.md 3, 5, 8` (a comment
# may continue on the next line), or `docs/stack-notes.md#custom-attention-masks`.
CITATION = re.compile(
    r"(?<![\w.-])docs/(?P<file>[\w.-]+(?:/[\w.-]+)*\.md)"
    r"(?:#(?P<anchor>[\w-]+)"
    r"|[ \t]*(?:\n[ \t]*#?[ \t]*)?(?:sections?[ \t]+)?(?P<sections>\d+(?:[ \t]*(?:,|,?[ \t]*and)[ \t]*\d+)*)\b)?"
)
# The benchmark index and its pages: `benchmarks/results/arith-sizing.md`, `...md#anchor`.
BENCHMARK_PAGE = re.compile(r"(?<![\w./-])(?P<file>benchmarks/(?:RESULTS|results/[\w.-]+)\.md)(?:#(?P<anchor>[\w-]+))?")
# A page a command writes, cited as its output before any machine has recorded one.
WRITTEN_BY_A_COMMAND = {"benchmarks/results/gpu-check.md"}  # make gpu-check (benchmarks/gpu_check.py --out)
# Relative links of markdown files: `[text](stack-notes.md#anchor)`, resolved from the file.
LINK = re.compile(r"\]\((?P<target>[^)\s#]+\.md)(?:#(?P<anchor>[^)\s]+))?\)")
# Documentation that lived beside the checkout and not in it (kept out of this file's text).
OUTSIDE = "/".join(("shared", "docs"))
# A citation this walk cannot follow (it names no file): write `docs/step-jepa.md section N`.
UNFOLLOWABLE = re.compile("method doc" + r",? (?:sections? )?\d")


def cited_files() -> list[Path]:
    files = [ROOT / name for name in FILES if (ROOT / name).is_file()]
    for folder in FOLDERS:
        files += sorted(p for p in (ROOT / folder).rglob("*") if p.is_file() and p.suffix in SUFFIXES)
    return files


def slug(heading: str) -> str:
    """GitHub's anchor of a markdown heading: lower case, punctuation dropped, spaces to `-`."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def headings(doc: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", doc.read_text(encoding="utf-8"), flags=re.DOTALL)
    return [m.group(1) for m in re.finditer(r"^#{1,6}[ \t]+(.+?)[ \t]*#*$", text, flags=re.MULTILINE)]


def anchors(doc: Path) -> set[str]:
    names, seen = set(), {}
    for heading in headings(doc):
        base = slug(heading)
        count = seen.get(base, 0)
        names.add(base if count == 0 else f"{base}-{count}")
        seen[base] = count + 1
    return names | set(re.findall(r"<a (?:id|name)=\"([^\"]+)\"", doc.read_text(encoding="utf-8")))


def sections(doc: Path) -> set[str]:
    """The numbers of numbered headings (`## 3. Predictor tokens ...` -> "3")."""
    return {m.group(1) for h in headings(doc) if (m := re.match(r"(\d+)[.)]?\s", h))}


def citations() -> list[tuple[str, str, str | None, list[str]]]:
    """(where, cited file, anchor, section numbers) of every citation."""
    found = []
    for path in cited_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        where = path.relative_to(ROOT)
        for m in CITATION.finditer(text):
            numbers = re.findall(r"\d+", m.group("sections") or "")
            line = text.count("\n", 0, m.start()) + 1
            found.append((f"{where}:{line}", f"docs/{m.group('file')}", m.group("anchor"), numbers))
        for m in BENCHMARK_PAGE.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            found.append((f"{where}:{line}", m.group("file"), m.group("anchor"), []))
        if path.suffix == ".md":
            for m in LINK.finditer(text):
                if "://" in m.group("target"):
                    continue
                target = (path.parent / m.group("target")).resolve()
                if not target.is_relative_to(ROOT):
                    found.append((f"{where}", m.group("target"), None, []))  # fails below: outside
                    continue
                line = text.count("\n", 0, m.start()) + 1
                found.append((f"{where}:{line}", str(target.relative_to(ROOT)), m.group("anchor"), []))
    return found


def problems(cites: list[tuple[str, str, str | None, list[str]]]) -> list[str]:
    out = []
    for where, cited, anchor, numbers in cites:
        doc = ROOT / cited
        if cited in WRITTEN_BY_A_COMMAND and not doc.exists():
            continue
        if cited.startswith("..") or not doc.is_file():
            out.append(f"{where}: {cited} is not a file of this repository")
            continue
        if anchor and anchor not in anchors(doc):
            out.append(f"{where}: {cited} has no heading #{anchor}")
        for n in numbers:
            if n not in sections(doc):
                out.append(f"{where}: {cited} has no section {n}")
    return out


def test_the_method_doc_and_stack_notes_are_in_the_repository():
    assert {"1", "2", "3", "4", "5", "6", "7", "8", "9"} <= sections(ROOT / "docs" / "step-jepa.md")
    assert "custom-attention-masks" in anchors(ROOT / "docs" / "stack-notes.md")


def test_every_cited_doc_file_section_and_anchor_exists():
    cites = citations()
    # The method doc is cited by the code that implements it; a walk that finds none is broken.
    assert sum(c[1] == "docs/step-jepa.md" and bool(c[3]) for c in cites) >= 10
    assert not problems(cites), "\n".join(problems(cites))


def test_the_benchmark_pages_cited_in_code_and_docs_are_followed():
    cites = citations()
    # The Makefile, the sizing script and the method regression test cite the arith sizing page.
    cited = {c[1] for c in cites if not c[0].startswith("tests/project/test_doc_citations.py")}
    assert "benchmarks/results/arith-sizing.md" in cited and "benchmarks/RESULTS.md" in cited
    assert sum(c[1].startswith("benchmarks/") for c in cites) >= 5


def test_nothing_cites_documentation_outside_the_repository():
    offenders = [
        f"{p.relative_to(ROOT)}:{i}"
        for p in cited_files()
        for i, line in enumerate(p.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
        if OUTSIDE in line or UNFOLLOWABLE.search(line)
    ]
    assert not offenders, offenders


@pytest.mark.parametrize(
    "text, expected",
    [
        ("(docs/step-jepa.md section 4)", ("docs/step-jepa.md", None, ["4"])),
        ("defined in docs/step-jepa.md sections 3 and 5.", ("docs/step-jepa.md", None, ["3", "5"])),
        ("# both share it; docs/step-jepa.md 3, 5, 8.", ("docs/step-jepa.md", None, ["3", "5", "8"])),
        ("written from docs/step-jepa.md\n# section 8 alone", ("docs/step-jepa.md", None, ["8"])),
        ("see docs/stack-notes.md#custom-attention-masks).", ("docs/stack-notes.md", "custom-attention-masks", [])),
        ("(see ../docs/data-format.md)", ("docs/data-format.md", None, [])),
    ],
)
def test_citations_are_read_in_every_form_the_code_writes(text, expected):
    m = CITATION.search(text)
    assert (f"docs/{m.group('file')}", m.group("anchor"), re.findall(r"\d+", m.group("sections") or "")) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("# Sizes: benchmarks/results/arith-sizing.md (size_arith.py)", ("benchmarks/results/arith-sizing.md", None)),
        (
            "(benchmarks/results/test-tiers.md#why-the-suite-is-set-up-as-it-is).",
            ("benchmarks/results/test-tiers.md", "why-the-suite-is-set-up-as-it-is"),
        ),
        ("indexed in benchmarks/RESULTS.md.", ("benchmarks/RESULTS.md", None)),
        ("`benchmarks/results/gpu-check-<card>.md`", None),
    ],
)
def test_benchmark_page_citations_are_read(text, expected):
    m = BENCHMARK_PAGE.search(text)
    assert (m and (m.group("file"), m.group("anchor"))) == expected


def test_a_missing_section_or_anchor_is_reported():
    assert problems([("x.py:1", "docs/step-jepa.md", None, ["42"])]) == ["x.py:1: docs/step-jepa.md has no section 42"]
    assert problems([("x.py:1", "docs/stack-notes.md", "nope", [])]) == [
        "x.py:1: docs/stack-notes.md has no heading #nope"
    ]
    gone = "docs/" + "gone.md"  # not written whole: this file's own text is walked too
    assert problems([("x.py:1", gone, None, [])]) == [f"x.py:1: {gone} is not a file of this repository"]
    page = "benchmarks/results/flex.md"
    assert problems([("x.py:1", page, "nope", [])]) == [f"x.py:1: {page} has no heading #nope"]


def test_slugs_follow_github():
    assert slug("3. Predictor tokens and the inline layout") == "3-predictor-tokens-and-the-inline-layout"
    assert slug("MLflow 3.17") == "mlflow-317"


def _drawings(doc: Path) -> list[list[list[bool]]]:
    """The attention-mask drawings of `doc`: rows `<i> <name> 1 . 1 ...` in a code block."""
    blocks = re.findall(r"```\n(.*?)```", doc.read_text(encoding="utf-8"), flags=re.DOTALL)
    drawings = []
    for block in blocks:
        rows = [
            re.findall(r"[1.]", m.group(1))
            for m in re.finditer(r"^\s*\d+ \S+((?:\s+[1.])+)\s*$", block, flags=re.MULTILINE)
        ]
        if rows:
            drawings.append([[cell == "1" for cell in row] for row in rows])
    return drawings


def test_the_method_doc_draws_the_masks_the_code_builds():
    import torch

    from stepjepa.method.masks import inline_mask, packed_mask

    # Section 3's example: U U S1 S1 S2 S2 S3, s1_end = 3, s2_end = 5, K = 2.
    spans = (torch.tensor([7]), torch.tensor([3]), torch.tensor([5]), 2, torch.tensor([True]))
    built = [inline_mask(*spans)[0, 0].tolist(), packed_mask(*spans)[0, 0].tolist()]
    assert _drawings(ROOT / "docs" / "step-jepa.md") == built
