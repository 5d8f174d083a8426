"""The benchmark report's writer: fixed figures in, the Markdown table and the PNGs out.

No benchmark runs here; the writer takes only data, so this checks what a full
``make bench`` would write from the figures it measured.
"""

from pathlib import Path

import pytest

from bench.figures import FIGURES_FILE_ENV, Figure, read, record
from bench.report import (
    README_END,
    README_START,
    BenchRun,
    Point,
    Report,
    figure_rows,
    readme_block,
    run_module,
    update_readme,
    write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def fixed_report() -> Report:
    points = [
        Point(series, n, rate * n, 10.0 * n, 25.0 * n)
        for series, rate in (
            ("one-text jobs", 20.0),
            ("/v1/embeddings", 40.0),
            ("peer (infinity torch)", 50.0),
        )
        for n in (1, 4, 16)
    ]
    return Report(
        date="2026-12-01 05:00 UTC",
        machine={"CPU": "Test CPU, 2 cores, AVX-512 (avx512f)", "memory": "8.0 GiB"},
        versions={"python": "3.11.9", "torch": "2.9.0", "git": "abc1234"},
        quick=False,
        points=points,
        cpu_ms_per_job={"api": 4.0, "gpu worker": 6.5, "cpu worker": 2.0, "postgresql": 1.5},
        cpu_clients=16,
        runs=[
            BenchRun(
                "search",
                12.3,
                0,
                "p50 2 ms",
                [Figure("convoq POST /v1/search: p50", 2.04, "ms"), Figure("ratio", 1.234, "", 2)],
            ),
            BenchRun("soak", 3.0, 1, "boom"),
        ],
    )


def test_report_writes_the_table_and_the_plots(tmp_path: Path) -> None:
    out = tmp_path / "RESULTS.md"
    pngs = write_report(fixed_report(), out)
    text = out.read_text()

    assert "| benchmark | figure | value |" in text
    assert "| sweep | one-text jobs, 16 clients: requests/s | 320.0 |" in text
    assert "| sweep | one-text jobs, 4 clients: p50 / p95 ms | 40 / 100 |" in text
    assert "| sweep | /v1/embeddings, 16 clients: ÷ peer | 0.80 |" in text
    assert "| cpu | CPU ms per one-text job: server total | 14.0 |" in text
    assert "| soak | ran | FAILED (exit 1), 3 s |" in text
    assert "| search | convoq POST /v1/search: p50 | 2.0 ms |" in text
    assert "| search | ratio | 1.23 |" in text
    assert "AVX-512" in text
    assert "- torch: 2.9.0" in text
    assert "2026-12-01" in text
    assert "```text\np50 2 ms\n```" in text

    assert [p.name for p in pngs] == ["results-concurrency.png", "results-cpu.png"]
    for png in pngs:
        assert png.read_bytes()[:8] == PNG_MAGIC
        assert png.stat().st_size > 5_000
        assert "![" in text
        assert f"({png.name})" in text


def test_no_peer_no_ratio_and_no_sweep_no_plot(tmp_path: Path) -> None:
    report = fixed_report()
    report.points = [p for p in report.points if not p.series.startswith("peer")]
    assert not any("÷ peer" in row[1] for row in figure_rows(report))
    report.points, report.cpu_ms_per_job = [], {}
    assert write_report(report, tmp_path / "RESULTS.md") == []


def test_a_benchmark_hands_its_figures_to_the_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(FIGURES_FILE_ENV, raising=False)
    record("not collected", 1.0)  # run alone: nothing written, nothing raised
    figures = tmp_path / "figures.jsonl"
    assert read(figures) == []
    monkeypatch.setenv(FIGURES_FILE_ENV, str(figures))
    record("jobs/s", 123.456, "jobs/s")
    record("ratio", 0.98765, digits=3)
    assert read(figures) == [Figure("jobs/s", 123.456, "jobs/s"), Figure("ratio", 0.98765, "", 3)]
    assert [f.shown() for f in read(figures)] == ["123.5 jobs/s", "0.988"]


def test_a_subprocess_benchmark_figures_become_rows() -> None:
    run = run_module("figures", ["p50 of something", "12.25", "ms"], timeout=60)
    assert run.returncode == 0, run.output
    assert run.figures == [Figure("p50 of something", 12.25, "ms")]
    rows = figure_rows(Report("d", {}, {}, False, runs=[run]))
    assert rows[-2] == ["figures", "p50 of something", "12.2 ms"]
    assert rows[-1][:2] == ["figures", "ran"]
    assert rows[-1][2].startswith("ok, ")


def test_a_full_run_puts_the_table_and_plots_in_the_readme(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n## Performance\n\n{README_START}\nold\n{README_END}\n\nafter\n")
    report = fixed_report()
    out = tmp_path / "bench" / "RESULTS.md"
    pngs = write_report(report, out)
    assert update_readme(readme, readme_block(report, out, pngs, readme))
    text = readme.read_text()
    assert "old" not in text
    assert text.endswith("\n\nafter\n")
    assert "![results-concurrency](bench/results-concurrency.png)" in text
    assert "![results-cpu](bench/results-cpu.png)" in text
    assert "[bench/RESULTS.md](bench/RESULTS.md)" in text
    assert "| sweep | one-text jobs, 16 clients: requests/s | 320.0 |" in text
    assert "Test CPU, 2 cores, AVX-512" in text

    unmarked = tmp_path / "OTHER.md"
    unmarked.write_text("no markers")
    assert not update_readme(unmarked, "x")
    assert unmarked.read_text() == "no markers"
