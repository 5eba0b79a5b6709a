"""Regenerate every figure and REPORT.md from saved results (never trains)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from . import beyond, deep_figures, figures, real, simulation
from . import palette as pal
from . import theory as th
from .loaders import CorruptInput, MissingInput, load_deep, load_simulations
from .report import render_report
from .simulation import curve_points, sam_vs_m_points

__all__ = ["BuildResult", "build", "FIGURE_FUNCTIONS"]

FIGURE_FUNCTIONS = (
    simulation.fig1_tradeoff, simulation.fig2_strength, simulation.fig3_weights, simulation.fig4_sam_vs_m,
    deep_figures.fig5_deep, deep_figures.fig6_probes,
)


@dataclass
class BuildResult:
    figures: list = field(default_factory=list)     # FigureResult
    skipped: list = field(default_factory=list)     # one line each
    errors: list = field(default_factory=list)      # corrupt inputs, one line each
    report: Path | None = None
    real: object = None                             # real.RealSection or None
    beyond: object = None                           # beyond.BeyondSection or None


def _skip_line(exc: MissingInput) -> str:
    return f"{exc.what} missing ({exc.path}); produce them with: {exc.command}"


def _real(ctx, report_path, res: BuildResult, log) -> None:
    """The real-data section (real.real_section) into ``res.real``; its skips and
    files logged one line each."""
    try:
        res.real = real.real_section(ctx, report_path)
    except figures.SkipFigure as exc:
        res.skipped.append(str(exc))
        log(str(exc))
        return
    res.skipped += res.real.skipped
    for line in res.real.skipped:
        log(line)
    for fr in res.real.figures:
        _log_figure(fr, log)


def _log_figure(fr, log) -> None:
    log(f"{fr.name}: {', '.join(str(p) for p in fr.files)}")


def _load_input(what, loader, describe, results_dir: Path, res: BuildResult, inputs: list):
    """(data, skip line) of one input, ``loader(results_dir)``. Appends the report's input line
    (``describe(data, results_dir)``, or missing/unreadable) to ``inputs``; a missing input goes
    to ``res.skipped``, a corrupt one to ``res.errors``, and both return (None, that line)."""
    try:
        data = loader(results_dir)
    except MissingInput as exc:
        line = _skip_line(exc)
        res.skipped.append(line)
        inputs.append(f"{what}: missing (`{exc.command}`)")
        return None, line
    except CorruptInput as exc:
        line = f"{what} results unreadable: {exc}"
        res.errors.append(line)
        inputs.append(f"{what}: unreadable ({exc.problem})")
        return None, line
    inputs.append(f"{what}: {describe(data, results_dir)}")
    return data, None


def _describe_sim(d, results_dir: Path) -> str:
    return (f"`{results_dir / 'simulations.json'}` ({len(d['claims'])} "
            f"claim rows, profile {d['meta'].get('profile', '?')})")


def _describe_deep(d, results_dir: Path) -> str:
    return (", ".join(f"{ds} ({len(r)} runs)" for ds, r in d.items())
            + f" under `{results_dir / 'deep'}`")


def _sim_inputs(sim, sim_skip, results_dir: Path, res: BuildResult):
    """(sim, settings, sim_points, sim_m, sim_skip) from the loaded simulation results ``sim``
    (None when absent): the theory settings of their meta and their curve and sam_vs_m points.
    Results not comparable with the theory, or with an unexpected layout, are recorded in
    ``res.errors`` and dropped (``sim`` None, ``sim_skip`` that line); the theory then uses the
    default settings (when not comparable) or the simulations' own (when unreadable)."""
    try:
        settings = th.settings_from_meta(sim["meta"] if sim else None)
    except ValueError as exc:
        sim_skip = f"simulation results not comparable with the theory curves: {exc}"
        res.errors.append(sim_skip)
        sim, settings = None, th.TheorySettings()
    sim_points = sim_m = None
    if sim:
        try:
            sim_points, sim_m = curve_points(sim), sam_vs_m_points(sim)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            sim_skip = (f"simulation results unreadable: {results_dir / 'simulations.json'}: "
                        f"unexpected curves/sam_vs_m layout ({type(exc).__name__}: {exc})")
            res.errors.append(sim_skip)
            sim = None
    return sim, settings, sim_points, sim_m, sim_skip


def _figures(ctx, res: BuildResult, log) -> None:
    """Draw :data:`FIGURE_FUNCTIONS` into ``res.figures``; skipped ones into ``res.skipped``;
    one log line each."""
    for fn in FIGURE_FUNCTIONS:
        try:
            fr = fn(ctx)
        except figures.SkipFigure as exc:
            res.skipped.append(str(exc))
            log(str(exc))
            continue
        res.figures.append(fr)
        _log_figure(fr, log)


def _beyond(ctx, report_path, res: BuildResult, log) -> None:
    """The beyond-the-paper section (beyond.beyond_section) into ``res.beyond``; its
    skips and files logged one line each."""
    res.beyond = beyond.beyond_section(ctx, report_path)
    for line in res.beyond.skipped:
        log(line)
    res.skipped += res.beyond.skipped
    for fr in res.beyond.figures:
        _log_figure(fr, log)


#: (folder under results/, title, figure name, column name in the overview) of the converged-protocol
#: sections, the report's headline, in report order
CONVERGED = (("converged/cpu-24ep", "Fashion-MNIST, all 60,000 images, 24 epochs, on two CPU cores (width 8)",
              "converged_cpu24_curves", "24 epochs, CPU, width 8"),
             ("converged/cpu-48ep", "Fashion-MNIST, all 60,000 images, 48 epochs, on two CPU cores (width 8)",
              "converged_cpu48_curves", "48 epochs, CPU, width 8"),
             ("converged/cpu-96ep", "Fashion-MNIST, all 60,000 images, 96 epochs, on two CPU cores (width 8)",
              "converged_cpu96_curves", "96 epochs, CPU, width 8"),
             ("converged/cpu-12ep", "Fashion-MNIST, all 60,000 images, 12 epochs, on two CPU cores (width 8)",
              "converged_cpu12_curves", "12 epochs, CPU, width 8"),
             ("converged/gpu", "Fashion-MNIST, all 60,000 images, 12 epochs, on one GPU at full width (64)",
              "converged_gpu_curves", "12 epochs, GPU, width 64"),
             ("converged/cpu", "Fashion-MNIST, all 60,000 images, 6 epochs, on two CPU cores (width 8)",
              "converged_cpu_curves", "6 epochs, CPU, width 8"))
#: the overview's column order (by training budget)
OVERVIEW_ORDER = ("converged/cpu", "converged/cpu-12ep", "converged/cpu-24ep", "converged/cpu-48ep", "converged/cpu-96ep",
                  "converged/gpu")


def _converged(results_dir: Path, out_dir: Path, report_path, inputs: list, res: BuildResult, log,
               theory_rho=None) -> str:
    """The converged-protocol sections (paper_figs.converged) of the folders that exist, joined; a folder
    whose runs are unreadable goes to ``res.errors``. ``theory_rho``: T6's rho-sweep shape and radius
    (beyond.theory_rho_shape) for the folders that hold a rho sweep."""
    import json

    from . import converged as cv
    cost = None
    cost_path = results_dir / "beyond" / "cost.json"
    if cost_path.exists():
        try:
            cost = json.loads(cost_path.read_text())
        except (OSError, ValueError):
            cost = None
    parts, columns = [], {}
    for sub, title, fig, name in CONVERGED:
        folder = results_dir / sub
        try:
            text = cv.section(folder, title, out_dir / f"{fig}.png", Path(report_path).parent, cost=cost,
                              theory_rho=theory_rho)
        except ValueError as exc:
            res.errors.append(f"converged results unreadable: {exc}")
            log(res.errors[-1])
            continue
        if text:
            runs = cv.load_runs(folder)
            inputs.append(f"converged: `{folder}` ({len(runs)} runs)")
            parts.append(text)
            columns[sub] = (name, runs, cv.folder_runs(folder / "plateau"))
            log(f"{fig}: {out_dir / (fig + '.png')}")
    short = cv.verdicts_only(results_dir / "deep" / "fashion-mnist",
                             "The same verdict rule on the short CPU preset (not converged)", cost=cost)
    if parts and short:
        parts.append(short)
    order = [columns[sub] for sub in OVERVIEW_ORDER if sub in columns]
    table = cv.overview([c[:2] for c in order], cost, doubled=[c[2] for c in order]) if len(columns) > 1 else None
    if table:
        parts.insert(0, "\n".join([
            "### The paper's claims at every budget", "",
            "Each cell: the paired-by-seed difference in points (mean, 95% t interval over the n seeds), robust "
            "accuracy as the per-image worst case of PGD-10 and AutoAttack unless marked PGD-10, and the verdict "
            "(the rule and the thresholds of the sections below; claim (d), the step cost, does not depend on "
            "the budget). A verdict that changes with the budget was decided by the budget, not by the method. "
            "The first row: each budget's plateau test (its doubled-budget runs, one per configuration and seed).",
            "", table, ""]))
    return "\n".join(parts)


def build(results_dir="results", out_dir=None, report_path="REPORT.md", formats=("png", "pdf"),
          command: str = "python -m paper_figs", log=print, extra_runs=()) -> BuildResult:
    """Draw all figures into ``out_dir`` (default ``<results_dir>/figures``) and write the report.

    ``extra_runs``: further deep.run ``--out`` folders whose runs are drawn beside the shipped ones
    (:func:`paper_figs.loaders.load_deep`). Missing inputs skip what needs them (one line each via ``log``); corrupt inputs are collected
    in ``BuildResult.errors`` (the CLI then exits with status 2) and the rest is still drawn.
    """
    results_dir = Path(results_dir)
    out_dir = Path(out_dir) if out_dir is not None else results_dir / "figures"
    pal.apply_paper_style()
    res, inputs = BuildResult(), []
    sim, sim_skip = _load_input("simulations", load_simulations, _describe_sim, results_dir, res, inputs)
    deep, deep_skip = _load_input("deep", lambda d: load_deep(d, extra_runs), _describe_deep, results_dir, res,
                                  inputs)
    sim, settings, sim_points, sim_m, sim_skip = _sim_inputs(sim, sim_skip, results_dir, res)
    ctx = figures.FigureContext(
        settings=settings, out_dir=out_dir,
        sim_points=sim_points, sim_m=sim_m, sim_skip=sim_skip,
        deep=deep, deep_skip=deep_skip, formats=tuple(formats),
        sim_tol=dict((sim or {}).get("meta", {}).get("opt_tol") or {}), results_dir=results_dir)
    for line in res.errors + res.skipped:
        log(line)
    _figures(ctx, res, log)
    _real(ctx, report_path, res, log)
    _beyond(ctx, report_path, res, log)
    conv = _converged(results_dir, out_dir, report_path, inputs, res, log,
                      theory_rho=beyond.theory_rho_shape(ctx.settings))
    render_report(report_path, res.figures, [s for s in res.skipped if "skipped:" in s],
                  res.errors, sim, deep, command, inputs, real=res.real, beyond=res.beyond, converged=conv)
    res.report = Path(report_path)
    log(f"report: {report_path}")
    return res
