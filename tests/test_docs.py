"""The documentation: the generated results page is up to date, the generator survives results
files it does not know, and the README and docs stand alone (no file outside the repository,
no broken relative link)."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "make_docs.py"
# Pages other branches are writing: a link to one of them is allowed before it exists.
PLANNED_PAGES = {
    "docs/engine.md", "docs/losses.md", "docs/teachers.md", "docs/cli.md",
    "docs/data-and-metrics.md", "docs/recipes.md",
}
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
ANCHOR_ID = re.compile(r'<a id="([^"]+)"></a>')


def _make_docs():
    spec = importlib.util.spec_from_file_location("make_docs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_docs"] = module
    spec.loader.exec_module(module)
    return module


make_docs = _make_docs()


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def test_committed_results_page_and_readme_block_are_up_to_date():
    result = subprocess.run([sys.executable, str(SCRIPT), "--check"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_known_files_render_with_their_own_tables():
    page = (ROOT / "docs" / "results.md").read_text()
    assert "not the one this page was written for" not in page
    for name in sorted(p.name for p in (ROOT / "benchmarks" / "results").glob("*.json")):
        assert f"(../benchmarks/results/{name})" in page, name


def test_numbers_in_the_page_come_from_the_json():
    """Independent read of quality.json: each entry's KD mean accuracy and paired gain, rounded
    as the page shows them, are in its summary row."""
    data = json.loads((ROOT / "benchmarks" / "results" / "quality.json").read_text())
    page = (ROOT / "docs" / "results.md").read_text()
    rows = {line.split("`")[1]: line for line in page.splitlines()
            if line.startswith("| [`")}
    for key, entry in data.items():
        summary = entry["summary"]
        row = rows[key]
        kd = summary["student + KD"]["accuracy"]["mean"]
        gain = summary["kd_gain_points"]["mean"]
        assert f"{kd:.1f}" in row, key
        assert f"{abs(gain):.1f}" in row, key
    losses = json.loads((ROOT / "benchmarks" / "results" / "cpu-losses.json").read_text())
    for case, entry in losses["results"].items():
        assert f"{entry['median_ms']['cpp']:.3g} ms" in page, case


def test_check_fails_on_a_stale_page_and_write_fixes_it(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    (results / "cpu-losses.json").write_text(
        (ROOT / "benchmarks" / "results" / "cpu-losses.json").read_text())
    out, readme = tmp_path / "results.md", tmp_path / "README.md"
    readme.write_text(f"intro\n{make_docs.BEGIN}\nold\n{make_docs.END}\nrest\n")
    args = ["--results", str(results), "--out", str(out), "--readme", str(readme)]
    assert make_docs.main(args + ["--check"]) == 1
    assert make_docs.main(args) == 0
    assert make_docs.main(args + ["--check"]) == 0
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("rest\n") and "old" not in text
    assert "cpu-losses.json" in text
    out.write_text(out.read_text() + "edited by hand\n")
    assert make_docs.main(args + ["--check"]) == 1


def test_unknown_and_changed_results_files_render_generically(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    unknown = {
        "kd_loss": {"device": "NVIDIA H100", "torch": "2.13.0", "date": "2026-12-06",
                    "cases": [{"shape": [4096, 527], "dtype": "bf16",
                               "median_ms": {"kdcore-triton": 0.125, "eager": 0.5}},
                              {"shape": [8000, 5000], "dtype": "fp32",
                               "median_ms": {"kdcore-triton": 1.5, "eager": 6.25}}]},
        "teachers": {"crepe-tiny": {"params": 487000, "frames_per_s": 812.5},
                     "silero-vad": {"params": 463000, "frames_per_s": 9001.0}},
        "deep": {"a": {"b": {"c": {"d": {"e": {"f": 1}}}}}},
        "notes": [[1, 2], {"x": None}],
    }
    (results / "nvidia-h100.json").write_text(json.dumps(unknown))
    # a known name whose layout has changed must not break the page either
    (results / "cpu-losses.json").write_text(json.dumps({"results": [1, 2, 3]}))
    (results / "list.json").write_text(json.dumps([{"a": 1, "b": "x|y"}, {"a": 2}]))
    page = make_docs.render_page(results)
    assert "[`nvidia-h100.json`](../benchmarks/results/nvidia-h100.json)" in page
    assert "Results on NVIDIA H100" in page
    assert "| 4096, 527 | bf16 | 0.125 | 0.5 |" in page
    assert "| crepe-tiny | 487000 | 812.5 |" in page
    assert "not the one this page was written for" in page
    assert "x\\|y" in page
    block = make_docs.render_readme_block(results)
    assert "[nvidia-h100.json](benchmarks/results/nvidia-h100.json)" in block


def test_unreadable_results_file_names_it(tmp_path):
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(SystemExit, match="broken.json"):
        make_docs.render_page(tmp_path)


def test_readme_markers_must_be_well_formed():
    assert make_docs.fill_readme("no markers\n", "x") == "no markers\n"
    with pytest.raises(SystemExit, match="README"):
        make_docs.fill_readme(f"{make_docs.END}\n{make_docs.BEGIN}\n", "x")


def test_quality_command_is_rebuilt_from_the_key():
    config = {"train_clips": 1024, "epochs": 360, "teacher_epochs": 120, "mixup": 0.4}
    entry = {"config": config, "seeds": [0, 1]}
    command = make_docs.quality_command(
        "synthetic_train_clips1024_teacher_epochs120_epochs360_mixup0.4", entry)
    assert command == ("python benchmarks/quality.py --datasets synthetic --seeds 0 1 --set "
                       "train_clips=1024 teacher_epochs=120 epochs=360 mixup=0.4")
    assert make_docs.quality_command("synthetic_v1_student_width32", entry) is None
    assert make_docs.quality_command("synthetic_epochs360_first_teacher", entry) is None
    held = make_docs.quality_command("fsdd_epochs360_heldoutgeorge", entry)
    assert held.endswith("--set epochs=360 --held-out george")


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_docs_stand_alone(path):
    text = path.read_text()
    assert "../shared" not in text
    assert "REFERENCE" not in text


def _anchors(page: Path) -> set[str]:
    text = page.read_text()
    slugs = set(ANCHOR_ID.findall(text))
    for line in text.splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            slugs.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return slugs


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path):
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    for target in LINK.findall(text):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue
        file_part, _, fragment = target.partition("#")
        resolved = (path.parent / file_part).resolve()
        relative = resolved.relative_to(ROOT).as_posix() if resolved.is_relative_to(ROOT) \
            else None
        assert relative is not None, f"{path.name}: {target} leaves the repository"
        if not resolved.exists():
            assert relative in PLANNED_PAGES, f"{path.name}: {target} does not exist"
            continue
        if fragment and resolved.suffix == ".md":
            assert fragment in _anchors(resolved), f"{path.name}: no anchor {target}"


def test_readme_is_short_and_keeps_the_quickstart():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 220
    assert "bash scripts/demo.sh" in text and "bash scripts/test.sh" in text
    for page in ("losses", "frontend", "engine", "teachers", "cli", "results"):
        assert f"(docs/{page}.md)" in text, page


def _code_blocks(language: str) -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def test_readme_python_blocks_compile():
    blocks = _code_blocks("python")
    assert blocks
    for block in blocks:
        compile(block, "README.md", "exec")


def test_readme_commands_parse_and_scripts_exist():
    """Every ``kdcore ...`` line of the README's bash blocks is accepted by the CLI's parser
    (flags and choices exist), and every ``bash scripts/...`` names a file in the repo."""
    import shlex

    from kdcore import cli

    build_parser = getattr(cli, "build_parser", None)
    if build_parser is None:
        pytest.skip("kdcore.cli has no build_parser() to check the commands against")
    commands = 0
    for block in _code_blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words[:1] == ["kdcore"]:
                build_parser().parse_args(words[1:])
                commands += 1
            elif words[:1] == ["bash"]:
                assert (ROOT / words[1]).is_file(), words[1]
    assert commands >= 4
