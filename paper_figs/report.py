"""REPORT.md: simulation claims, deep result tables and every figure with a two-line caption."""
from __future__ import annotations

import math
import os
from pathlib import Path

from samrobust.tables import markdown_table as _markdown_table, table_lines

from .aggregate import PROBE_KEYS, robust_keys, summarise_runs
from .loaders import is_smoke

__all__ = ["claims_table", "deep_tables", "render_report", "markdown_table", "figure_block"]


def _num(x, digits: int = 4) -> str:
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "**no**"
    if isinstance(x, (int, float)):
        if isinstance(x, float) and not math.isfinite(x):
            return "-"
        return f"{x:.{digits}g}"
    if isinstance(x, (list, tuple)):
        return "[" + ", ".join(_num(v, digits) for v in x) + "]"
    return str(x).replace("|", "\\|").replace("\n", " ")


def markdown_table(header, rows) -> str:
    """Markdown table of ``header`` (column names) and ``rows`` (cell lists); cells are written by
    the report's one formatter (numbers to 4 significant digits, booleans yes / **no**, None "-",
    '|' escaped)."""
    return _markdown_table(header, rows, cell=_num)


def figure_block(f, heading: str, base: Path) -> list:
    """Report lines of one FigureResult ``f``: anchor, heading, the PNG (path relative to the
    report's folder ``base``), the two caption lines and the notes."""
    png = next((p for p in f.files if str(p).endswith(".png")), f.files[0])
    rel = os.path.relpath(Path(png).resolve(), base)
    lines = [f'<a id="{f.name.replace("_", "-")}"></a>', "", f"### {heading}", "",
             f"![{f.title}]({rel})", "",
             f"*What it shows:* {f.shows}  ", f"*Theory vs practice:* {f.verdict.text}", ""]
    lines += [f"> {n}" for n in f.notes]
    return lines + ([""] if f.notes else [])


def claims_table(claims) -> str:
    """Markdown table of the simulations' claim rows (columns of the contract)."""
    rows = []
    for c in claims:
        tol = _num(c.get("tolerance"))
        if c.get("tolerance_reason"):
            tol += f" ({_num(c['tolerance_reason'])})"
        rows.append([_num(c.get(k)) for k in ("id", "claim", "description", "theory", "sim_mean", "ci95", "diff")]
                    + [tol, _num(c.get("holds"))])
    checked = [c for c in claims if c.get("holds") is not None]
    n_hold = sum(1 for c in checked if c["holds"] is True)
    extra = len(claims) - len(checked)
    head = ["id", "claim", "description", "theory", "simulation", "95% CI", "diff", "tolerance", "holds"]
    return _markdown_table(head, rows) + (
        f"\n\n{n_hold} of {len(checked)} checked rows hold within tolerance"
        + (f"; {extra} rows are measurements without a pass/fail test" if extra else "") + ".\n")


def deep_tables(deep: dict) -> str:
    """Markdown tables of deep results per dataset: accuracies (mean ± sd over seeds, %),
    cost, and the feature probes where present."""
    out = []
    for ds, runs in deep.items():
        configs = summarise_runs(runs)
        keys = robust_keys(configs)
        out.append(f"### {ds}\n")
        if is_smoke(ds):
            out.append("Smoke runs of `deep.run --quick` (tiny data, one epoch): these check the "
                       "pipeline, their accuracies say nothing about the methods.\n")
        out.append("Accuracies in %, mean ± sd over seeds (PGD evaluation as stored by deep.run).\n")
        rows = []
        for c in configs:
            epochs = ",".join(str(e) for e in sorted(c.epochs, key=str))
            cells = [c.text, str(len(c.seeds)), epochs, c.clean.fmt()]
            cells += [c.robust[k].fmt() if k in c.robust else "-" for k in keys]
            cells += [c.wall_time_s.fmt(1.0, 1), c.images_per_s.fmt(1.0, 0)]
            rows.append(cells)
        out += table_lines(["setting", "seeds", "epochs", "clean"] + [f"PGD {k}" for k in keys]
                           + ["wall time (s)", "images/s"], rows)
        probed = [c for c in configs if c.probes]
        if probed:
            out.append("\nFeature probes (accuracy in %, same test images):\n")
            out += table_lines(["setting"] + list(PROBE_KEYS),
                               [[c.text] + [c.probes[k].fmt() if k in c.probes else "-" for k in PROBE_KEYS]
                                for c in probed])
        out.append("")
        out.append(masking_section(runs))
    return "\n".join(out)


def masking_section(runs) -> str:
    """The gradient-masking checks of deep.masking (PGD-10 vs stronger PGD vs AutoAttack on the same
    images, monotone in eps, large-eps sanity) for the runs of one data set, one level below its heading."""
    from deep.masking import masking_markdown
    text = masking_markdown([r.raw for r in runs])
    return text.replace("## Gradient-masking checks", "#### Gradient-masking checks", 1) + "\n"


def render_report(report_path, figures, skipped, errors, sim, deep, command: str,
                  inputs: list, real=None, beyond=None, converged: str = "") -> str:
    """Write the report atomically; returns its text. ``figures``: FigureResult list; ``real``:
    the real-data section (:class:`paper_figs.real.RealSection`: ``figures`` listed in the
    verdicts table, ``text`` placed before the deep result tables) or None."""
    report_path = Path(report_path)
    base = report_path.parent.resolve()
    lines = ["# Results report: SAM vs adversarial training, theory and practice", "",
             f"Generated by `{command}` from saved results; this command trains nothing. Theory "
             "curves are evaluated in closed form with `linear_theory`; simulation and deep numbers "
             "are read from the result files listed below.", "", "## Inputs", ""]
    lines += [f"* {x}" for x in inputs]
    if skipped or errors:
        lines += ["", "Skipped:", ""] + [f"* {s}" for s in list(errors) + list(skipped)]
    if converged:
        lines += ["", "## Deep networks on all the data, with the plateau test (the headline deep evidence)", "",
                  "These runs train every method on all 60,000 Fashion-MNIST images with the same epoch budget, "
                  "record learning curves, test whether the budget reached a plateau (a doubled-budget run of one "
                  "seed; the table says whether it passed) and attack with PGD-10 and AutoAttack on the same "
                  "images. The short-preset sections further down (\"short training, not converged\") stopped "
                  "while every method was still learning and are kept for the record.", "", converged]
    lines += ["", "## Verdicts at a glance", ""]
    short = (list(real.figures) if real else []) + (list(beyond.figures) if beyond else [])
    if converged:
        lines += ["The paper's claims on the converged runs: the first table of the section above. Below, one line "
                  "per figure; the real-data and beyond-the-paper figures are the short CPU preset's (short "
                  "training, not converged).", ""]
    lines += table_lines(["figure", "theory vs practice"],
                         [[f"[{f.title}](#{f.name.replace('_', '-')})"
                           + (" (short training, not converged)" if converged and f in short else ""), f.verdict.text]
                          for f in list(figures) + short])
    lines += ["", "## Simulations, claim by claim (docs/theory.md S1-S5)", ""]
    if sim is not None:
        lines.append(claims_table(sim["claims"]))
    else:
        lines.append("Not available (see Skipped above).")
    lines += ["", "## Figures", ""]
    for i, f in enumerate(figures, 1):
        lines += figure_block(f, f"Figure {i}: {f.title}", base)
    if real is not None:
        lines += [real.text, ""]
    if beyond is not None and beyond.text:
        lines += [beyond.text, ""]
    lines += ["## Deep results (short training, not converged)", ""]
    lines.append(deep_tables(deep) if deep else "Not available (see Skipped above).")
    text = "\n".join(lines).rstrip() + "\n"
    report_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = report_path.with_name(report_path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(report_path)
    return text
