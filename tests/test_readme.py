"""The README works as a user's document: its local links and the example files it names exist,
its Python quick start runs as written from the repository root, and docs/RESULTS.md's table of
contents points at its own headings."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_readme_links_and_example_files_exist():
    links = re.findall(r"\]\(([^)#]+)\)", README)
    local = [u for u in links if not re.match(r"[a-z]+://", u)]
    assert local, "the README links nothing"
    for u in local:
        assert (ROOT / u).exists(), f"README links a missing file: {u}"
    named = set(re.findall(r"examples/[\w.-]+\.(?:jpg|png|json|md)", README))
    assert {"examples/car_a.jpg", "examples/car_b.jpg"} <= named
    for p in named:
        assert (ROOT / p).is_file(), p
    assert len(README.splitlines()) < 200  # a user's document, not a lab notebook


def test_readme_python_quick_start_runs(monkeypatch):
    block = re.search(r"```python\n(.*?)```", README, re.S).group(1)
    monkeypatch.chdir(ROOT)
    ns: dict = {}
    exec(compile(block, "README.md", "exec"), ns)  # noqa: S102 - the README's own example
    assert ns["out"]["flow"].shape == (160, 301, 2)
    assert ns["out"]["matchability"].shape == (160, 301)


def test_results_contents_point_at_headings():
    text = (ROOT / "docs" / "RESULTS.md").read_text(encoding="utf-8")
    toc = re.search(r"## Contents\n\n(.*?)\n\n", text, re.S).group(1)
    anchors = re.findall(r"\]\(#([^)]+)\)", toc)
    body = text.split("## Contents", 1)[1]
    headings = [h for h in re.findall(r"^#{2,3} (.+)$", body, re.M) if h != "Contents"]
    assert len(anchors) == len(headings) > 20

    def slug(t):
        return re.sub(r"[^\w\- ]", "", t.strip().lower()).replace(" ", "-")

    seen: dict = {}
    for a, h in zip(anchors, headings):
        s = slug(h)
        n = seen.get(s, 0)
        seen[s] = n + 1
        assert a == (s if n == 0 else f"{s}-{n}"), (a, h)
