"""Regenerate every figure and REPORT.md from saved results (never trains)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from . import beyond_figures, deep_figures, figures, real_figures
from . import palette as pal
from . import theory as th
from .loaders import CorruptInput, MissingInput, load_deep, load_simulations
from .report import render_report
from .simdata import curve_points, sam_vs_m_points

__all__ = ["BuildResult", "build", "FIGURE_FUNCTIONS"]

FIGURE_FUNCTIONS = (
    figures.fig1_tradeoff, figures.fig2_strength, figures.fig3_weights, figures.fig4_sam_vs_m,
    deep_figures.fig5_deep, deep_figures.fig6_probes,
)


@dataclass
class BuildResult:
    figures: list = field(default_factory=list)     # FigureResult
    skipped: list = field(default_factory=list)     # one line each
    errors: list = field(default_factory=list)      # corrupt inputs, one line each
    report: Path | None = None
    real: object = None                             # real_figures.RealSection or None
    beyond: object = None                           # beyond_figures.BeyondSection or None


def _skip_line(exc: MissingInput) -> str:
    return f"{exc.what} missing ({exc.path}); produce them with: {exc.command}"


def _real(ctx, report_path, res: BuildResult, log) -> None:
    """The real-data section (real_figures.real_section) into ``res.real``; its skips and
    files logged one line each."""
    try:
        res.real = real_figures.real_section(ctx, report_path)
    except figures.SkipFigure as exc:
        res.skipped.append(str(exc))
        log(str(exc))
        return
    res.skipped += res.real.skipped
    for line in res.real.skipped:
        log(line)
    for fr in res.real.figures:
        log(f"{fr.name}: {', '.join(str(p) for p in fr.files)}")


def build(results_dir="results", out_dir=None, report_path="REPORT.md", formats=("png", "pdf"),
          command: str = "python -m paper_figs", log=print) -> BuildResult:
    """Draw all figures into ``out_dir`` (default ``<results_dir>/figures``) and write the report.

    Missing inputs skip what needs them (one line each via ``log``); corrupt inputs are collected
    in ``BuildResult.errors`` (the CLI then exits with status 2) and the rest is still drawn.
    """
    results_dir = Path(results_dir)
    out_dir = Path(out_dir) if out_dir is not None else results_dir / "figures"
    pal.apply_paper_style()
    res = BuildResult()
    inputs = []

    def load(what, loader, describe):
        """(data, skip line) of one input; records the input line, skips and errors."""
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
        inputs.append(f"{what}: {describe(data)}")
        return data, None

    sim, sim_skip = load("simulations", load_simulations,
                         lambda d: f"`{results_dir / 'simulations.json'}` ({len(d['claims'])} "
                                   f"claim rows, profile {d['meta'].get('profile', '?')})")
    deep, deep_skip = load("deep", load_deep,
                           lambda d: ", ".join(f"{ds} ({len(r)} runs)" for ds, r in d.items())
                           + f" under `{results_dir / 'deep'}`")
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
    ctx = figures.FigureContext(
        settings=settings, out_dir=out_dir,
        sim_points=sim_points, sim_m=sim_m, sim_skip=sim_skip,
        deep=deep, deep_skip=deep_skip, formats=tuple(formats),
        sim_tol=dict((sim or {}).get("meta", {}).get("opt_tol") or {}), results_dir=results_dir)
    for line in res.errors + res.skipped:
        log(line)
    for fn in FIGURE_FUNCTIONS:
        try:
            fr = fn(ctx)
        except figures.SkipFigure as exc:
            res.skipped.append(str(exc))
            log(str(exc))
            continue
        res.figures.append(fr)
        log(f"{fr.name}: {', '.join(str(p) for p in fr.files)}")
    _real(ctx, report_path, res, log)
    res.beyond = beyond_figures.beyond_section(ctx, report_path)
    for line in res.beyond.skipped:
        log(line)
    res.skipped += res.beyond.skipped
    for fr in res.beyond.figures:
        log(f"{fr.name}: {', '.join(str(p) for p in fr.files)}")
    render_report(report_path, res.figures, [s for s in res.skipped if "skipped:" in s],
                  res.errors, sim, deep, command, inputs, real=res.real, beyond=res.beyond)
    res.report = Path(report_path)
    log(f"report: {report_path}")
    return res
