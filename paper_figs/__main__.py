"""``python -m paper_figs``: regenerate every figure (PNG + PDF) and REPORT.md from saved results."""
from __future__ import annotations

import argparse
import os
import shlex
import sys

from samrobust.cli import CliParser, DefaultsHelpFormatter, add_common

from .build import build


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(
        prog="python -m paper_figs", formatter_class=DefaultsHelpFormatter,
        description="Regenerate every figure (PNG and PDF, paper column width) and the results "
                    "report from saved results. Never trains: theory curves are closed forms from "
                    "linear_theory; simulation points come from <results>/simulations.json "
                    "(python -m simulations.run) and deep points from <results>/deep/<dataset>/"
                    "*.json (python -m deep.run). A missing input skips what needs it with one "
                    "line naming the command that produces it.",
        epilog="Exit status: 0 when every available input was drawn (missing inputs included), "
               "2 for bad options or an unreadable (corrupt) input file.")
    p.add_argument("--results", default="results",
                   help="folder holding simulations.json and deep/")
    p.add_argument("--out", default=None,
                   help="folder for the figures (default: <results>/figures); files are "
                        "fig1_tradeoff, fig2_strength, fig3_weights, fig4_sam_vs_m, fig5_deep, "
                        "fig6_probes and, per real data set, real_<dataset>_accuracy and "
                        "real_<dataset>_tradeoff, with extensions .png and .pdf")
    p.add_argument("--report", default="REPORT.md",
                   help="path of the markdown report, which embeds the PNGs by relative path")
    p.add_argument("--formats", default="png,pdf",
                   help="comma-separated figure formats among png, pdf, svg")
    p.add_argument("--runs", action="append", default=[], metavar="DIR",
                   help="also draw your own deep.run results: a deep.run --out folder (e.g. runs/deep) with "
                        "<dataset>/ subfolders; repeatable. Its data sets get their own panels, named "
                        "'<dataset> (<folder>)'; smoke runs (--quick) never count in a verdict. With --runs "
                        "the figures and report go to runs/figures and runs/REPORT.md unless --out/--report say "
                        "otherwise, so the shipped ones stay as they are")
    return add_common(p, (
        "python -m paper_figs                              # results/ -> results/figures + REPORT.md",
        "python -m paper_figs --runs runs/deep             # also your runs -> runs/figures + runs/REPORT.md",
        "python -m paper_figs --formats png --out /tmp/figs --report /tmp/REPORT.md"), p.epilog)


def _given(argv_list, option: str) -> bool:
    """Whether ``option`` was typed on the command line (as ``--opt value`` or ``--opt=value``)."""
    return any(a == option or a.startswith(option + "=") for a in argv_list)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    formats = [f.strip().lower() for f in args.formats.split(",") if f.strip()]
    bad = [f for f in formats if f not in ("png", "pdf", "svg")]
    if not formats or bad:
        parser.error(f"--formats must list png, pdf or svg, got {args.formats!r}")
    if "png" not in formats:
        formats.insert(0, "png")  # the report embeds PNGs
    for option, folder in [("--results", args.results)] + [("--runs", r) for r in args.runs]:
        # a mistyped folder would otherwise give an empty report (every input "missing") and create it
        if not os.path.isdir(folder):
            parser.error(f"{option} {folder}: no such folder")
    argv_list = sys.argv[1:] if argv is None else list(argv)
    command = "python -m paper_figs" + ("" if not argv_list else " " + shlex.join(argv_list))
    out, report = args.out, args.report
    if args.runs:               # your own runs: keep the shipped figures and report as they are
        out = out or "runs/figures"
        report = report if _given(argv_list, "--report") else "runs/REPORT.md"
    res = build(args.results, out, report, formats, command=command, extra_runs=args.runs)
    if res.errors:
        print(f"python -m paper_figs: error: {len(res.errors)} unreadable input(s): "
              + "; ".join(res.errors), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
