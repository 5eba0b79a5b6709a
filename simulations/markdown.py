"""Results table (stdout and markdown) for the simulation claims."""
from __future__ import annotations

from typing import List, Optional

from samrobust.tables import table_lines

__all__ = ["format_table", "markdown_report", "status_word"]


def _f(x: Optional[float], digits: int = 4) -> str:
    if x is None:
        return "-"
    return f"{x:.{digits}g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.2e}"


def status_word(row: dict) -> str:
    if row["holds"] is None:
        return "measured"
    return "yes" if row["holds"] else "NO"


def _cells(row: dict) -> List[str]:
    lo, hi = row["ci95"]
    rel = row.get("relation", "=")
    theory = _f(row["theory"])
    if rel in (">", "<"):
        theory = f"{rel} {theory}"
    return [row["id"], theory, f"{_f(row['sim_mean'])} [{_f(lo)}, {_f(hi)}]", _f(row["diff"]),
            _f(row["tolerance"], 3), status_word(row)]


HEADER = ["claim", "theory", "sim mean [95% CI]", "diff", "tolerance", "within tol."]


def format_table(rows: List[dict]) -> str:
    """Plain-text table: claim id, theory, sim mean with 95% interval, diff, tolerance, holds."""
    cells = [HEADER] + [_cells(r) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEADER))]
    lines = ["  ".join(c[i].ljust(widths[i]) for i in range(len(HEADER))) for c in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_report(rows: List[dict], meta: dict) -> str:
    checked = [r for r in rows if r["holds"] is not None]
    failed = [r for r in checked if not r["holds"]]
    out = ["# Simulations: theory (linear_theory) vs the real algorithms", "",
           f"Profile `{meta.get('profile')}`, seeds {meta.get('seeds')}, wall time "
           f"{meta.get('wall_time_s', 0):.1f} s (training {meta.get('train_time_s', 0):.1f} s; "
           f"{sum(j['cached'] for j in meta.get('jobs', []))} of {len(meta.get('jobs', []))} training jobs "
           f"reused from the cache, originally {meta.get('cached_jobs_train_time_s', 0):.1f} s).", "",
           f"**{len(checked) - len(failed)} of {len(checked)} checks hold**"
           + (f"; failing: {', '.join(r['id'] for r in failed)}." if failed else "."), ""]
    # "|" inside a cell (norms such as ||v||) would end the cell: escape it
    out += table_lines(HEADER + ["description"], [_cells(r) + [r["description"]] for r in rows],
                       cell=lambda c: str(c).replace("|", "\\|"))
    out += ["", "Tolerance of each row:", ""]
    seen = []
    for r in rows:
        reason = r["tolerance_reason"]
        if reason not in seen:
            seen.append(reason)
            out.append(f"* {r['id']}: {reason}")
    out.append("")
    return "\n".join(out)
