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
    "docs/data-and-metrics.md", "docs/recipes.md", "docs/pitch.md", "docs/enhancement.md",
    "docs/asr.md",
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
    for page in ("losses", "frontend", "engine", "teachers", "cli", "data-and-metrics", "results",
                 "pitch", "enhancement", "asr"):
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


def _demo_report(quick: bool = False) -> dict:
    """A demo ``report.json`` in the layout ``kdcore demo`` writes (values made up)."""
    def scores(f1, agreement):
        return {"student": {"f1": f1, "agreement": agreement, "speech_share": 0.4},
                "all_speech": {"f1": 0.56, "agreement": 0.4, "speech_share": 0.4},
                "all_silence": {"f1": 0.0, "agreement": 0.6, "speech_share": 0.4}}
    return {"task": "vad", "seed": 0, "quick": quick, "compression": 25.37,
            "teacher": {"name": "silero-vad", "parameters": 243585,
                        "macs_per_second_of_audio": 21.7e6, "real_time_factor": 0.0733},
            "student": {"name": "VadStudent", "parameters": 9601,
                        "macs_per_second_of_audio": 0.82e6, "real_time_factor": 0.0206},
            "held_out": {"clean": scores(0.94, 0.954), "0 dB": scores(0.80, 0.85),
                         "10 dB": scores(0.90, 0.91)},
            "data": {"train_windows": 320, "test_windows": 8, "window_s": 4.096,
                     "train_speakers": ["george", "jackson"], "test_speakers": ["theo"]},
            "teacher_seconds": 6.2, "torch_threads": 2,
            "machine": {"cpu_count": 2, "torch": "2.13.0+cpu"},
            "date": "2026-12-06T03:00:00Z", "total_seconds": 151.4, "table": "..."}


def test_demo_report_renders_row_page_and_time_sentence(tmp_path):
    (tmp_path / "demo-vad.json").write_text(json.dumps(_demo_report()))
    block = make_docs.render_readme_block(tmp_path)
    row = next(line for line in block.splitlines() if "demo-vad.json" in line)
    # noisy = mean over the noisy sets, computed here independently: (0.85 + 0.91) / 2
    assert "9,601" in row and "243,585" in row and "0.82 MMACs" in row and "21.7 MMACs" in row
    assert "clean 95.4 % (F1 0.940)" in row and "noisy 88.0 % (F1 0.850)" in row
    assert "(151 s in all)" in row
    sentence = make_docs.render_demo_time(tmp_path)
    assert "`kdcore demo` took 151 s on 2 CPU cores" in sentence
    page = make_docs.render_page(tmp_path)
    assert "not the one this page was written for" not in page
    assert "| 0 dB | 0.800 | 85.0 % | 0.560 | 60.0 % |" in page
    # a fresh-clone wall time, when recorded, wins over the demo's own clock
    (tmp_path / "demo-vad.json").write_text(json.dumps({**_demo_report(True), "wall_s": 170.2}))
    assert "`kdcore demo --quick` took 170 s" in make_docs.render_demo_time(tmp_path)
    wrapped = {"report": _demo_report(), "wall_s": 180.0}
    (tmp_path / "demo-vad.json").write_text(json.dumps(wrapped))
    assert "`kdcore demo` took 180 s" in make_docs.render_demo_time(tmp_path)
    assert "noisy 88.0 % (F1 0.850)" in make_docs.render_readme_block(tmp_path)
    (tmp_path / "demo-vad.json").unlink()
    assert "not recorded yet" in make_docs.render_demo_time(tmp_path)


def test_readme_demo_time_block_is_filled(tmp_path):
    (tmp_path / "results").mkdir()
    readme = tmp_path / "README.md"
    readme.write_text(f"a\n{make_docs.DEMO_BEGIN}\nold\n{make_docs.DEMO_END}\nb\n")
    args = ["--results", str(tmp_path / "results"), "--out", str(tmp_path / "r.md"),
            "--readme", str(readme)]
    assert make_docs.main(args) == 0
    assert "not recorded yet" in readme.read_text() and "old" not in readme.read_text()


def _teachers_file() -> dict:
    return json.loads((ROOT / "benchmarks" / "results" / "teachers-cpu.json").read_text())


def test_teachers_cache_fill_renders_from_the_json():
    data = _teachers_file()["cache_fill"]
    page = (ROOT / "docs" / "results.md").read_text()
    for name, entry in data["results"].items():
        line = next(x for x in page.splitlines() if x.startswith(f"| `{name}` |"))
        assert f"{entry['parameters']:,}" in line and f"| {entry['frames_per_s']:.0f} |" in line


def test_teachers_pitch_enhancement_ctc_render_when_present(tmp_path):
    data = _teachers_file()
    for key in ("pitch", "enhancement", "ctc"):  # each is added below, after its absence
        data.pop(key, None)

    def scores(rpa):
        return {"rpa": rpa, "rca": rpa + 0.01, "cents_rmse": 300.0, "voicing_f1": 0.5}
    data["pitch"] = {"benchmark": "pitch KD", "date": "2026-12-06T03:00:00+00:00",
                     "training": {"epochs": 10}, "data": {},
                     "scores_vs_crepe_full": {"student": scores(0.61), "crepe-tiny": scores(0.94)},
                     "cost": {"student": {"parameters": 120600, "macs_per_frame": 6.4e6,
                                          "frames_per_s": 1.0e4},
                              "crepe-tiny": {"parameters": 486552, "macs_per_frame": 3.6e7,
                                             "frames_per_s": 1.4e3}},
                     "verdict": "the student does not beat crepe-tiny"}
    block = make_docs.render_readme_block(_write(tmp_path, data))
    assert "student (120,600) RPA 0.610" in block and "crepe-tiny (486,552) RPA 0.940" in block
    assert "enhancement" not in block and "CTC" not in block

    def row(sdri, stoi):
        return {"si_sdri_db": sdri, "pesq_wb": 1.5, "stoi": stoi}
    data["enhancement"] = {"parameters": {"nsnet2": 2687563, "student": 140577},
                           "results": {"0dB": {"clips": 8, "noisy": row(0.0, 0.7),
                                               "nsnet2": row(8.0, 0.8),
                                               "student_kd": row(7.25, 0.78)}}}

    def stats(values):
        return {"mean": sum(values) / len(values), "std": 0.0, "per_seed": values}
    data["ctc"] = {"seeds_finished": [0, 1],
                   "results": {name: {"wer": stats([wer, wer]), "cer": stats([wer / 2] * 2),
                                      "parameters": 1000}
                               for name, wer in (("teacher", 0.1), ("student_alone", 0.4),
                                                 ("student_kd", 0.25))}}
    data["mystery"] = {"x": 1}
    results = _write(tmp_path, data)
    block = make_docs.render_readme_block(results)
    assert "student_kd SI-SDRi 7.25 dB" in block and "NSNet2 SI-SDRi 8.00 dB" in block
    assert "student + KD 25.0 %" in block and "student alone 40.0 %" in block
    page = make_docs.render_page(results)
    assert "| 0dB | `student_kd` | 7.25 | 1.5 | 0.78 |" in page
    assert "| `student_kd` | 25.0 % | 12.5 % | 1,000 |" in page
    assert "### `mystery`" in page and "- x: 1" in page
    # an enhancement key in another layout falls back to the generic rendering
    data["enhancement"] = {"results": [1, 2]}
    page = make_docs.render_page(_write(tmp_path, data))
    assert "layout of key `enhancement` differs" in page
    assert "not the one this page was written for" not in page


def test_enhancement_renders_seed_spread_of_the_students():
    """Students run over several seeds show ``mean ± std``; the seed-independent rows (and a
    single seed) show the value alone; an unfinished run says so."""
    student = {"si_sdri_db": 5.0, "pesq_wb": 1.6, "stoi": 0.8,
               "std": {"si_sdri_db": 0.25, "pesq_wb": 0.01, "stoi": 0.0},
               "per_seed": {"si_sdri_db": [4.75, 5.25], "pesq_wb": [1.59, 1.61],
                            "stoi": [0.8, 0.8]}}
    entry = {"seeds": [0, 1, 2], "seeds_finished": [0, 1], "complete": False,
             "results": {"0dB": {"clips": 4, "nsnet2": {"si_sdri_db": 9.0, "pesq_wb": 1.8,
                                                        "stoi": 0.85},
                                 "student_kd": student}}}
    page = "\n".join(make_docs.render_enhancement(entry))
    assert "| 0dB | `student_kd` | 5 ± 0.25 | 1.6 ± 0.01 | 0.8 ± 0 |" in page
    assert "| 0dB | `nsnet2` | 9 | 1.8 | 0.85 |" in page
    assert "- seeds: 0, 1 of 0, 1, 2 (incomplete)" in page


def _write(tmp_path: Path, data: dict) -> Path:
    (tmp_path / "teachers-cpu.json").write_text(json.dumps(data))
    return tmp_path


def test_vad_results_render_per_noise_kind_and_fill_the_teachers_page(tmp_path):
    def row(f1, agreement):
        score = {"f1": f1, "agreement": agreement, "speech_share": 0.4}
        return {"student": score, "all_speech": {"f1": 0.571, "agreement": 0.4,
                                                 "speech_share": 0.4}}

    entry = {"benchmark": "vad", "date": "2026-12-06T05:00:00+00:00", "command": "python x",
             "data": {"test_speakers": ["nicolas", "theo"], "train_speakers": ["george"]},
             "costs": {"teacher": {"name": "silero-vad", "parameters": 243585,
                                   "macs_per_second_of_audio": 21745664},
                       "student": {"name": "VadStudent", "parameters": 9601,
                                   "macs_per_second_of_audio": 820224}},
             "results": {"clean": {"clean": row(0.951, 0.962)},
                         "white": {"0 dB": row(0.812, 0.833), "5 dB": row(0.902, 0.911)}}}
    lines = "\n".join(make_docs.render_vad(entry))
    assert "| `white` | 0.812 / 83.3 % (0.571) | 0.902 / 91.1 % (0.571) |" in lines
    assert "Clean audio: 0.951 / 96.2 % (0.571)" in lines
    results = tmp_path / "results"
    results.mkdir()
    (results / "teachers-cpu.json").write_text(json.dumps({"vad": entry}))
    summary = make_docs.render_vad_summary(results)
    assert "| clean | 0.951 | 96.2 % |  |" in summary
    assert f"| `white` | {(0.812 + 0.902) / 2:.3f} | {(83.3 + 91.1) / 2:.1f} % | 0.812 (0 dB) |" \
        in summary
    docs = tmp_path / "docs"
    docs.mkdir()
    page = docs / "teachers.md"
    page.write_text(f"intro\n{make_docs.VAD_BEGIN}\nold\n{make_docs.VAD_END}\nend\n")
    args = ["--results", str(results), "--out", str(docs / "results.md"),
            "--readme", str(tmp_path / "README.md")]
    assert make_docs.main(args) == 0
    assert summary in page.read_text() and "old" not in page.read_text()
    assert make_docs.main(args + ["--check"]) == 0
