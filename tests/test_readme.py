"""The README is a front page and its links, and the documentation site's nav, point at files that exist.

The site itself is checked by ``make docs`` (``mkdocs build --strict``: every link between pages and
every anchor); this test covers what the site build does not see: README.md, which lives outside
``docs/``, and the nav of mkdocs.yml, without needing mkdocs installed.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_README_LINES = 200

# [text](target) and ![alt](target); the target ends at whitespace or the closing parenthesis
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)  # http:, https:, mailto:, ...


def without_code(text: str) -> str:
    """Markdown text with fenced code blocks and inline code removed (links in code are not links)."""
    text = re.sub(r"^(```|~~~).*?^\1[^\n]*$", "", text, flags=re.M | re.S)
    return re.sub(r"`[^`\n]*`", "", text)


def relative_links(markdown: str) -> list[str]:
    return [t for t in LINK.findall(without_code(markdown)) if not EXTERNAL.match(t) and not t.startswith("#")]


def slug(heading: str) -> str:
    """The anchor Python-Markdown's toc extension (mkdocs) gives a heading."""
    text = re.sub(r"[`*_]", "", heading)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def anchors(markdown_file: Path) -> set[str]:
    text = re.sub(r"^(```|~~~).*?^\1[^\n]*$", "", markdown_file.read_text(encoding="utf-8"), flags=re.M | re.S)
    return {slug(m) for m in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, flags=re.M)}


def nav_targets(mkdocs_yml: str) -> list[str]:
    """The file of every entry of mkdocs.yml's nav (``- Title: path.md`` or ``- path.md``), read without YAML."""
    block = re.search(r"^nav:\s*\n((?:[ \t]+.*\n?|\s*\n)*)", mkdocs_yml, flags=re.M)
    assert block, "mkdocs.yml has no nav"
    targets = []
    for line in block.group(1).splitlines():
        m = re.match(r"\s*-\s*(?:[^:]+:\s*)?(\S+\.(?:md|html|png|txt|json))\s*$", line)
        if m and not EXTERNAL.match(m.group(1)):
            targets.append(m.group(1))
    return targets


def test_readme_is_a_front_page():
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_README_LINES, f"README.md has {n} lines; the manual belongs in docs/ (at most {MAX_README_LINES})"


def test_readme_links_point_at_files_that_exist():
    links = relative_links(README.read_text(encoding="utf-8"))
    assert links, "README.md links into the docs"
    broken = []
    for link in links:
        path, _, anchor = link.partition("#")
        target = (README.parent / path).resolve()
        if not target.exists():
            broken.append(f"{link}: no {target.relative_to(ROOT) if target.is_relative_to(ROOT) else target}")
        elif anchor and target.suffix == ".md" and anchor not in anchors(target):
            broken.append(f"{link}: {path} has no heading #{anchor}")
    assert not broken, "README.md: " + "; ".join(broken)


def test_readme_shows_a_picture_that_exists():
    pictures = [t for t in re.findall(r"!\[[^\]]*\]\(([^)\s]+)", README.read_text(encoding="utf-8"))
                if not EXTERNAL.match(t)]
    assert pictures and all((ROOT / p).is_file() for p in pictures)


def test_docs_nav_points_at_files_that_exist():
    mkdocs_yml = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    docs_dir = ROOT / (re.search(r"^docs_dir:\s*(\S+)", mkdocs_yml, flags=re.M) or [None, "docs"])[1]
    targets = nav_targets(mkdocs_yml)
    assert len(targets) >= 10, f"mkdocs.yml's nav lists {len(targets)} pages"
    missing = [t for t in targets if not (docs_dir / t).is_file()]
    assert not missing, f"mkdocs.yml nav entries with no file under {docs_dir.name}/: {missing}"


@pytest.mark.parametrize("markdown, expected", [
    ("see [a](docs/a.md#x) and ![p](docs/p.png), [web](https://x.org), [here](#top)", ["docs/a.md#x", "docs/p.png"]),
    ("`[not](a link)` and\n```\n[nor](this.md)\n```\n[yes](b.md)", ["b.md"]),
])
def test_relative_links(markdown, expected):
    assert relative_links(markdown) == expected


def test_slug_matches_mkdocs_anchors():
    assert slug("`make demo`") == "make-demo"
    assert slug("The method, on the paper's toy problem") == "the-method-on-the-papers-toy-problem"


def test_every_command_is_in_the_generated_reference():
    """docs/cli.md renders each command of pyproject.toml's [project.scripts] (a new command must be added)."""
    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    reference = (ROOT / "docs" / "cli.md").read_text()
    rendered = dict(re.findall(r":module: (\S+)\n\s+:command: main\n\s+:prog_name: (\S+)", reference))
    assert {prog: f"{module}:main" for module, prog in rendered.items()} == scripts


@pytest.mark.parametrize("script", ["alert_policies", "gain_sweep", "level_remedies", "objective_experiment",
                                    "validation_tracking"])
def test_an_example_scripts_help_shows_its_commands_as_written(script):
    """``-h`` prints the docstring's example commands unwrapped, so they can be copied."""
    import ast
    import subprocess
    import sys

    path = ROOT / "examples" / f"{script}.py"
    doc = ast.get_docstring(ast.parse(path.read_text()), clean=False)
    command = next(line.strip() for line in doc.splitlines() if line.startswith("    ") and "examples/" in line)
    proc = subprocess.run([sys.executable, str(path), "-h"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert command in [line.strip() for line in proc.stdout.splitlines()]
