"""Every benchmark in bench/, one after another, into one report: bench/RESULTS.md.

    python -m bench.report [--quick] [--out bench/RESULTS.md]

1. A concurrency sweep (1, 4, 16, 32, 64 clients; 1, 4, 16 with ``--quick``)
   of three targets, each measured as data: one-text embed jobs with
   ``Prefer: wait=30`` (bench/cost.py's path, :func:`bench.cost.run_mode`),
   one-text ``POST /v1/embeddings`` and the peer, infinity-emb's torch engine
   (bench/peers.py's :func:`bench.peers.run_workload`; skipped, and said so,
   when its virtualenv cannot be made). From it: throughput and p50/p95
   latency against concurrency, and CPU ms per job by process at 32 clients
   (16 with ``--quick``).
2. Every other benchmark module as a subprocess with its own flags (smaller
   ones with ``--quick``). Each figure it hands over with
   :func:`bench.figures.record` is a row of the table; what it printed goes
   verbatim into the report below the table, and the table records whether
   it ran and how long it took.

A full run (neither ``--quick``, ``--only`` nor ``--no-sweep``) also puts the
table and the plots into the README's Performance section, between its two
``bench.report`` markers.

The writer (:func:`write_report`) takes only data (:class:`Report`), so the
table and the plots are tested without running any benchmark
(tests/test_bench_report.py). Plots are PNGs from matplotlib's Agg backend,
written next to the report. A benchmark, not a test: a run with ``--quick``
is a smoke run, its figures are not the ones to publish.
"""

import argparse
import datetime
import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bench.figures import FIGURES_FILE_ENV, Figure
from bench.figures import read as read_figures

ROOT = Path(__file__).resolve().parent.parent
CONCURRENCY = (1, 4, 16, 32, 64)
QUICK_CONCURRENCY = (1, 4, 16)
CPU_CLIENTS, QUICK_CPU_CLIENTS = 32, 16
SERIES = ("one-text jobs", "/v1/embeddings", "peer (infinity torch)")
VERSIONED = (
    "torch",
    "transformers",
    "sentence-transformers",
    "celery",
    "flask",
    "gunicorn",
    "pymilvus",
    "milvus-lite",
    "psycopg",
    "redis",
    "optimum",
    "onnxruntime",
    "matplotlib",
)

# Every other module, its arguments for a full run and for --quick.
SUBPROCESS_BENCHES: tuple[tuple[str, list[str], list[str]], ...] = (
    ("cost", ["--markdown"], ["--jobs", "40", "--clients", "8", "--markdown"]),
    ("throughput", [], ["--small-jobs", "40", "--large-jobs", "4", "--raw-texts", "128"]),
    ("interactive", ["--markdown"], ["--jobs", "2", "--texts", "32", "--idle-searches", "5"]),
    (
        "peers",
        ["--markdown"],
        ["--small-requests", "64", "--large-requests", "4", "--skip-install", "--markdown"],
    ),
    ("overhead", [], ["--jobs", "40", "--clients", "8", "--tasks", "200"]),
    ("search", [], ["--vectors", "5000", "--queries", "20"]),
    ("summarize", [], ["--texts", "8", "--rounds", "1"]),
    ("autoscale", [], ["--tasks", "100"]),
    ("backends", [], ["--raw-texts", "128", "--t5-texts", "4", "--jobs", "40", "--clients", "8"]),
    ("privacy", [], ["--jobs", "30"]),
    ("soak", ["--minutes", "2"], ["--minutes", "0.25", "--drain", "60"]),
)


@dataclass(frozen=True)
class Point:
    """One target at one concurrency."""

    series: str
    clients: int
    per_second: float  # requests (one text each) per second
    p50_ms: float
    p95_ms: float


@dataclass(frozen=True)
class BenchRun:
    """A benchmark module run as a subprocess: how it went and what it printed."""

    module: str
    seconds: float
    returncode: int
    output: str
    figures: list[Figure] = field(default_factory=list)


@dataclass
class Report:
    date: str
    machine: dict[str, str]
    versions: dict[str, str]
    quick: bool
    points: list[Point] = field(default_factory=list)
    cpu_ms_per_job: dict[str, float] = field(default_factory=dict)  # by process, server side
    cpu_clients: int = CPU_CLIENTS
    runs: list[BenchRun] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


# --- the writer: data in, Markdown and PNGs out --------------------------------------------


def figure_rows(report: Report) -> list[list[str]]:
    """The table: every figure and ratio, one row each (benchmark, figure, value)."""
    rows = [["benchmark", "figure", "value"]]
    best_peer: dict[int, float] = {
        p.clients: p.per_second for p in report.points if p.series.startswith("peer")
    }
    for p in report.points:
        where = f"{p.series}, {p.clients} client{'' if p.clients == 1 else 's'}"
        rows.append(["sweep", f"{where}: requests/s", f"{p.per_second:,.1f}"])
        rows.append(["sweep", f"{where}: p50 / p95 ms", f"{p.p50_ms:,.0f} / {p.p95_ms:,.0f}"])
        peer = best_peer.get(p.clients)
        if peer and not p.series.startswith("peer"):
            rows.append(["sweep", f"{where}: ÷ peer", f"{p.per_second / peer:.2f}"])
    if report.cpu_ms_per_job:
        for role, ms in report.cpu_ms_per_job.items():
            rows.append(
                [
                    "cpu",
                    f"CPU ms per one-text job, {report.cpu_clients} clients: {role}",
                    f"{ms:.1f}",
                ]
            )
        total = sum(report.cpu_ms_per_job.values())
        rows.append(["cpu", "CPU ms per one-text job: server total", f"{total:.1f}"])
    for run in report.runs:
        rows += [[run.module, figure.name, figure.shown()] for figure in run.figures]
        status = "ok" if run.returncode == 0 else f"FAILED (exit {run.returncode})"
        rows.append([run.module, "ran", f"{status}, {run.seconds:.0f} s"])
    return rows


def markdown_table(rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|---|---|---:|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    return "\n".join(lines)


def plot_concurrency(points: Sequence[Point], path: Path) -> None:
    """Throughput (left) and p50/p95 latency (right) against clients, one line per target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (rate, latency) = plt.subplots(1, 2, figsize=(11, 4.2))
    for series in dict.fromkeys(p.series for p in points):
        mine = sorted((p for p in points if p.series == series), key=lambda p: p.clients)
        clients = [p.clients for p in mine]
        (line,) = rate.plot(clients, [p.per_second for p in mine], marker="o", label=series)
        color = line.get_color()
        latency.plot(
            clients, [p.p50_ms for p in mine], marker="o", color=color, label=f"{series} p50"
        )
        latency.plot(
            clients,
            [p.p95_ms for p in mine],
            marker="x",
            ls="--",
            color=color,
            label=f"{series} p95",
        )
    for axes, label in ((rate, "one-text requests/s"), (latency, "latency, ms")):
        axes.set_xscale("log", base=2)
        shown = sorted({p.clients for p in points})
        axes.set_xticks(shown, [str(n) for n in shown])
        axes.set_xlabel("concurrent clients")
        axes.set_ylabel(label)
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize=7)
    rate.set_title("Throughput")
    latency.set_title("Latency (p50 solid, p95 dashed)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_cpu(cpu_ms_per_job: dict[str, float], clients: int, path: Path) -> None:
    """A bar per process: CPU ms per one-text job."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 3.8))
    roles, values = list(cpu_ms_per_job), list(cpu_ms_per_job.values())
    bars = axes.bar(roles, values, color="tab:blue")
    axes.bar_label(bars, fmt="%.1f", fontsize=8)
    axes.set_ylabel("CPU ms per job")
    axes.set_title(f"CPU per one-text job by process ({clients} clients, Prefer: wait)")
    axes.tick_params(axis="x", labelrotation=20)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_report(report: Report, out: Path) -> list[Path]:
    """Write ``out`` (Markdown) and its PNGs next to it; return the PNGs written."""
    out.parent.mkdir(parents=True, exist_ok=True)
    stem = out.stem.lower()
    pngs: list[Path] = []
    parts = [
        "# convoq benchmark results",
        "",
        f"Made by `python -m bench.report{' --quick' if report.quick else ''}` on {report.date}."
        + (
            " A **quick** smoke run: small samples, not figures to publish." if report.quick else ""
        ),
        "",
        "## Machine",
        "",
        *(f"- {key}: {value}" for key, value in report.machine.items()),
        "",
        "## Versions",
        "",
        *(f"- {key}: {value}" for key, value in report.versions.items()),
        "",
        "## Figures",
        "",
        markdown_table(figure_rows(report)),
        "",
    ]
    if report.points:
        path = out.with_name(f"{stem}-concurrency.png")
        plot_concurrency(report.points, path)
        pngs.append(path)
        parts += [
            "## Throughput and latency against concurrency",
            "",
            f"![concurrency]({path.name})",
            "",
        ]
    if report.cpu_ms_per_job:
        path = out.with_name(f"{stem}-cpu.png")
        plot_cpu(report.cpu_ms_per_job, report.cpu_clients, path)
        pngs.append(path)
        parts += ["## CPU per job by process", "", f"![cpu per job]({path.name})", ""]
    if report.failures:
        parts += ["## Not measured", "", *(f"- {failure}" for failure in report.failures), ""]
    for run in report.runs:
        parts += [
            f"## bench.{run.module} ({run.seconds:.0f} s)",
            "",
            "```text",
            run.output.rstrip(),
            "```",
            "",
        ]
    out.write_text("\n".join(parts))
    return pngs


README_START = "<!-- bench.report: start -->"
README_END = "<!-- bench.report: end -->"


def readme_block(report: Report, out: Path, pngs: Sequence[Path], readme: Path) -> str:
    """What the README's Performance section shows of a report: where it came from, the
    plots, and the whole table."""
    cpu = report.machine.get("CPU", "unknown CPU")
    where = os.path.relpath(out, readme.parent)
    lines = [
        README_START,
        f"From `make bench` on {report.date}, git {report.versions.get('git', 'unknown')}, "
        f"on {cpu}. The full report, with what each benchmark printed: [{where}]({where}).",
        "",
        *(f"![{png.stem}]({os.path.relpath(png, readme.parent)})" for png in pngs),
        "",
        markdown_table(figure_rows(report)),
        README_END,
    ]
    return "\n".join(lines)


def update_readme(readme: Path, block: str) -> bool:
    """Replace the text between the README's two markers with ``block``; False, and the
    README untouched, when it has no such markers."""
    text = readme.read_text()
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        return False
    readme.write_text(text[:start] + block + text[end + len(README_END) :])
    return True


# --- the machine and the versions ------------------------------------------------------------


def machine() -> dict[str, str]:
    from bench.procstat import cpu_description

    memory = "unknown"
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            memory = f"{int(line.split()[1]) / 1024**2:.1f} GiB"
    return {
        "CPU": cpu_description(),
        "logical CPUs on the machine": str(os.cpu_count()),
        "memory": memory,
        "OS": platform.platform(),
    }


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True
        )
        found["git"] = rev + (" (with uncommitted changes)" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        found["git"] = "unknown"
    return found


# --- the runs ---------------------------------------------------------------------------------


def sweep_convoq(
    report: Report,
    clients: Sequence[int],
    requests_per_point: Callable[[int], int],
    cpu_clients: int,
    advance: Callable[[], None],
) -> None:
    """One stack: embed jobs (cost.py's path) and /v1/embeddings at each concurrency."""
    from bench.cost import MODES, SERVER_ROLES, roles, run_mode
    from bench.peers import Target, Workload, convoq_roles, openai_send, run_workload
    from bench.procstat import CpuMeter
    from bench.stack import bench_settings, local_services, running_stack

    mode = next(m for m in MODES if m.name == "wait=30")
    settings = bench_settings()
    with local_services(settings) as log_dir, running_stack(settings, log_dir) as stack:
        meter = CpuMeter(roles(stack))
        first = 0
        for n in clients:
            jobs = requests_per_point(n)
            result = run_mode(stack, meter, mode, first, jobs, n)
            first += jobs + n
            report.points.append(
                Point(
                    SERIES[0],
                    n,
                    result.jobs_per_second,
                    result.latency(0.5) * 1000,
                    result.latency(0.95) * 1000,
                )
            )
            if n == cpu_clients:
                report.cpu_ms_per_job = {r: result.per_job_ms(result.cpu[r]) for r in SERVER_ROLES}
            advance()
        target = Target(
            "convoq /v1/embeddings",
            openai_send(f"{stack.base_url}/v1/embeddings"),
            convoq_roles(stack),
            stack.headers,
        )
        for n in clients:
            workload = Workload("one text", 1, requests_per_point(n), first_text=10**6 + 10**5 * n)
            try:
                r = run_workload(target, workload, n)
            except Exception as error:  # the jobs' figures still count
                report.failures.append(f"/v1/embeddings, {n} clients: {error}")
            else:
                report.points.append(Point(SERIES[1], n, r.rate, r.p50 * 1000, r.p95 * 1000))
            advance()


def sweep_peer(
    report: Report,
    install: bool,
    clients: Sequence[int],
    requests_per_point: Callable[[int], int],
    advance: Callable[[], None],
) -> None:
    """infinity-emb's torch engine, started alone, at each concurrency; its virtualenv is
    made first when ``install`` (minutes, once), else it must be there already."""
    from bench import infinity
    from bench.peers import Target, Workload, openai_send, run_workload
    from bench.procstat import ProcessRole, descendants

    try:
        infinity.ensure_installed(skip_install=not install)
        with infinity.running_peer(
            "torch", infinity.default_model_dir(), ROOT / ".devstack" / "bench"
        ) as peer:
            target = Target(
                "infinity torch",
                openai_send(f"{peer.base_url}/embeddings"),
                [ProcessRole("infinity", lambda: descendants(peer.pid))],
            )
            for n in clients:
                workload = Workload(
                    "one text", 1, requests_per_point(n), first_text=5 * 10**6 + 10**5 * n
                )
                r = run_workload(target, workload, n)
                report.points.append(Point(SERIES[2], n, r.rate, r.p50 * 1000, r.p95 * 1000))
                advance()
    except (Exception, SystemExit) as error:  # the report still has convoq's figures
        report.failures.append(f"peer (infinity torch): {type(error).__name__}: {error}"[:300])
        for _ in range(len(clients) - sum(p.series == SERIES[2] for p in report.points)):
            advance()


def run_module(module: str, arguments: list[str], timeout: float) -> BenchRun:
    started = time.perf_counter()
    figures_file = Path(tempfile.mkdtemp(prefix="convoq-bench-")) / "figures.jsonl"
    try:
        done = subprocess.run(
            [sys.executable, "-m", f"bench.{module}", *arguments],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "HF_HUB_OFFLINE": "1", FIGURES_FILE_ENV: str(figures_file)},
        )
        output, code = (
            done.stdout
            + (f"\n[stderr, last lines]\n{_tail(done.stderr)}" if done.returncode else ""),
            done.returncode,
        )
    except subprocess.TimeoutExpired as expired:
        output, code = f"timed out after {timeout:.0f} s\n{_tail(str(expired.stdout or ''))}", -1
    figures = read_figures(figures_file)
    shutil.rmtree(figures_file.parent, ignore_errors=True)
    return BenchRun(module, time.perf_counter() - started, code, output, figures)


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.splitlines()[-lines:])


@contextmanager
def progress(total: int) -> Iterator[Callable[[str], Callable[[], None]]]:
    """A rich progress bar; ``step(label)`` gives the function that advances it by one."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()
    ) as bar:
        task = bar.add_task("benchmarks", total=total)

        def step(label: str) -> Callable[[], None]:
            bar.update(task, description=label)
            return lambda: bar.advance(task)

        yield step


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="small samples: a smoke run of minutes"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "RESULTS.md")
    parser.add_argument("--only", nargs="*", help="of the subprocess benchmarks, run only these")
    parser.add_argument("--no-sweep", action="store_true", help="skip the concurrency sweep")
    parser.add_argument(
        "--readme",
        type=Path,
        default=ROOT / "README.md",
        help="after a full run, put the table and plots between this file's bench.report markers",
    )
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    clients = QUICK_CONCURRENCY if args.quick else CONCURRENCY
    cpu_clients = QUICK_CPU_CLIENTS if args.quick else CPU_CLIENTS
    per_point = (lambda n: max(8, 2 * n)) if args.quick else (lambda n: max(100, 10 * n))
    timeout = 300 if args.quick else 3600
    benches = [b for b in SUBPROCESS_BENCHES if args.only is None or b[0] in args.only]
    report = Report(
        date=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        machine=machine(),
        versions=versions(),
        quick=args.quick,
        cpu_clients=cpu_clients,
    )
    total = (0 if args.no_sweep else 3 * len(clients)) + len(benches)
    with progress(total) as step:
        if not args.no_sweep:
            try:
                sweep_convoq(report, clients, per_point, cpu_clients, step("sweep: convoq"))
            except Exception as error:
                report.failures.append(f"convoq sweep: {type(error).__name__}: {error}"[:300])
            sweep_peer(report, not args.quick, clients, per_point, step("sweep: peer"))
        for module, full, quick in benches:
            advance = step(f"bench.{module}")
            report.runs.append(run_module(module, quick if args.quick else full, timeout))
            advance()
    pngs = write_report(report, args.out)
    print(f"wrote {args.out} and {', '.join(p.name for p in pngs) or 'no plots'}")
    complete = not (args.quick or args.no_sweep or args.only is not None)
    if complete and update_readme(args.readme, readme_block(report, args.out, pngs, args.readme)):
        print(f"updated the Performance section of {args.readme}")


if __name__ == "__main__":
    main()
