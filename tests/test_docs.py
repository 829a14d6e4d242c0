"""The product's documents: the repository cites only files it contains, the README stays one
screen long, every link resolves, and no page, config or code comment carries a dated remark
(history belongs in CHANGELOG.md)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README_MAX_LINES = 200
TEXT_SUFFIXES = (".py", ".yaml", ".yml", ".md")
SKIP_DIRS = {".git", ".venv", "logs", ".cache", "__pycache__", ".pytest_cache", ".ruff_cache"}

# The design notes live outside the repository, where users never see them.
INTERNAL_NOTE = re.compile(r"\b(?:DESIGN|PROTOCOLS|STYLE)\.md\b")
# The configs read the scenes from ../shared/data; nothing else beside the repository is ours.
SHARED_NOT_DATA = re.compile(r"\.\./shared\b(?!/data\b)")
# Files another branch is rewriting; each entry must still need its exception (checked below).
CITATION_EXCEPTIONS: dict[str, str] = {}

_MONTH = (
    r"(?:January|February|March|April|May|June|July|August|September|October|November|December)"
)
DATED = [
    re.compile(r"\b20\d\d-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])\b"),  # an ISO date
    re.compile(rf"\b(?:until|till|since|as of)\s+(?:\d{{1,2}}\s+)?(?:{_MONTH}\s+)?20\d\d\b", re.I),
    re.compile(rf"\b{_MONTH}\s+20\d\d\b"),
]

MD_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
# Paths of repository files a page names in its text: they must exist.
REPO_PATH = re.compile(
    r"(?<![\w./<>-])((?:configs|docs|bench|sfm|dataio|engine|models|evaluation|geometry|losses"
    r"|utils|vis|tests)/[\w./-]*\w\.(?:py|yaml|md))\b"
)


def repo_files(suffixes=TEXT_SUFFIXES) -> list[Path]:
    """The repository's files (tracked, and untracked ones git does not ignore), relative paths."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
        paths = [Path(p) for p in out]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: walk it
        paths = []
        for root, dirs, files in os.walk(REPO):
            dirs[:] = [d for d in dirs if d not in SKIP_DIRS]
            paths += [Path(root, f).relative_to(REPO) for f in files]
    return sorted(
        p
        for p in set(paths)
        if p.suffix in suffixes and p.parts[0] not in SKIP_DIRS and (REPO / p).is_file()
    )


def user_pages() -> list[Path]:
    return [Path("README.md"), *sorted(p.relative_to(REPO) for p in (REPO / "docs").glob("*.md"))]


def heading_anchors(text: str) -> set[str]:
    """GitHub's anchors of a markdown page's headings."""
    anchors = set()
    for line in text.splitlines():
        m = re.match(r"#{1,6}\s+(.*)", line)
        if m:
            slug = re.sub(r"[^\w\s-]", "", m.group(1).strip().lower())
            anchors.add(re.sub(r"\s", "-", slug))
    return anchors


# ------------------------------------------------------------------------------- the checks
def citations(text: str) -> list[str]:
    """What `text` cites outside the repository."""
    return [m.group(0) for m in INTERNAL_NOTE.finditer(text)] + [
        m.group(0) for m in SHARED_NOT_DATA.finditer(text)
    ]


def dated_remarks(text: str) -> list[str]:
    return [m.group(0) for pattern in DATED for m in pattern.finditer(text)]


def broken_links(page: Path) -> list[str]:
    """Relative links of a markdown page (and the repository paths it names) that lead nowhere."""
    text = (REPO / page).read_text()
    broken = []
    for target in MD_LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, mailto: ...
            continue
        path, _, anchor = target.partition("#")
        file = (REPO / page).parent / path if path else REPO / page
        if not file.is_file():
            broken.append(target)
        elif anchor and file.suffix == ".md" and anchor not in heading_anchors(file.read_text()):
            broken.append(target)
    broken += [p for p in REPO_PATH.findall(text) if not (REPO / p).is_file()]
    return broken


# -------------------------------------------------------------------------------- the tests
def test_the_repository_cites_only_files_it_contains():
    found = {}
    for path in repo_files():
        if path.name == "CHANGELOG.md":
            continue
        cited = citations((REPO / path).read_text(errors="replace"))
        if cited:
            found[path.as_posix()] = cited
    unexpected = {p: c for p, c in found.items() if p not in CITATION_EXCEPTIONS}
    assert not unexpected, (
        f"these files cite notes outside the repository {unexpected}: put the fact in "
        "docs/conventions.md (or inline) and cite that"
    )
    stale = sorted(set(CITATION_EXCEPTIONS) - set(found))
    assert not stale, f"{stale} no longer cite outside the repository: drop their exception"


def test_readme_fits_on_a_screen_or_two():
    n = len((REPO / "README.md").read_text().splitlines())
    assert n <= README_MAX_LINES, f"README.md has {n} lines; move detail to docs/"


@pytest.mark.parametrize("page", user_pages(), ids=str)
def test_links_and_named_files_resolve(page):
    assert not broken_links(page), f"{page} points at missing files: {broken_links(page)}"


def test_readme_links_every_page_the_user_needs():
    links = set(MD_LINK.findall((REPO / "README.md").read_text()))
    for page in ("docs/conventions.md", "docs/reference.md", "docs/results.md", "CHANGELOG.md"):
        assert page in links, f"README.md does not link {page}"


def test_no_dated_remark_outside_the_changelog():
    pages = [*user_pages(), *repo_files((".yaml", ".yml", ".py"))]
    found = {
        p.as_posix(): remarks
        for p in pages
        if (remarks := dated_remarks((REPO / p).read_text(errors="replace")))
    }
    assert not found, f"dated remarks (history goes to CHANGELOG.md): {found}"


# ----------------------------------------------------------- the checks catch what they should
def test_the_checks_catch_what_they_should(tmp_path, monkeypatch):
    year = 2026  # built here, so that this file holds no dated remark itself
    assert dated_remarks(f"# until {year}-12-01 only the DTU reader read it")
    assert dated_remarks(f"measured {year}-03-07 on the Intel host")
    assert dated_remarks(f"(until {year}: a frequency MLP)")
    assert dated_remarks(f"as of December {year}")
    assert not dated_remarks("DEMO_SEED = 20240601; NeRF-W (Martin-Brualla et al. 2021)")
    assert not dated_remarks("cameras stay fixed until 20% of the run; since 2 views")
    note, shared = "DESIGN" + ".md", ".." + "/shared"  # built here: this file cites neither
    assert citations(f"pixel centres at +0.5 ({note})") == [note]
    assert citations(f"see {shared}/PROTOCOLS" + ".md")
    assert citations(f"(see {shared}/notes)") == [shared]
    assert not citations("data_dir: ../shared/data/llff/fern")

    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# Frames\n")
    page = tmp_path / "docs" / "b.md"
    page.write_text("[ok](a.md) [ok](a.md#frames) [web](https://x.org) [bad](c.md)")
    assert broken_links(Path("docs/b.md")) == ["c.md"]
    page.write_text("[bad anchor](a.md#units) and `configs/missing.yaml`")
    assert broken_links(Path("docs/b.md")) == ["a.md#units", "configs/missing.yaml"]
