"""The benchmark report's writer: fixed figures in, the Markdown table and the PNGs out.

No benchmark runs here; the writer takes only data, so this checks what a full
``make bench`` would write from the figures it measured.
"""

from pathlib import Path

from bench.report import BenchRun, Point, Report, figure_rows, write_report

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
        runs=[BenchRun("search", 12.3, 0, "p50 2 ms"), BenchRun("soak", 3.0, 1, "boom")],
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
