"""Command line: ``python -m linear_theory {derive,solve,tradeoff}`` (see linear_theory/README.md).

Bad input exits with status 2 and a one-line message naming the parameter (no traceback).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time

import numpy as np

from samrobust import threat
from samrobust.cli import DefaultsHelpFormatter, add_common
from samrobust.files import write_text_atomic

from . import metrics
from .derive import derive_all, render_markdown, write_docs
from .model import FeatureModel, TsiprasModel
from .sam_objective import SAM_NORMS
from .solve import METHODS, attack_label, solve, tradeoff


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line on stderr and exit status 2; defaults shown in --help
    (samrobust.cli.DefaultsHelpFormatter), for the subcommands too."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):  # noqa: D401
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


def _add_model_options(p):
    g = p.add_argument_group("model (docs/theory.md section 1; defaults are the reference parameters)")
    g.add_argument("--model", choices=("feature", "tsipras"), default="feature",
                   help="feature: Gaussian robust/non-robust model; tsipras: robust x_0 = +-y w.p. p (numeric only)")
    g.add_argument("--k", type=int, default=1, help="number of robust features (feature model)")
    g.add_argument("--mu-r", type=float, default=4.0, help="robust amplitude mu_r (feature model)")
    g.add_argument("--sigma-r", type=float, default=4.0, help="robust spread sigma_r (feature model)")
    g.add_argument("--p", type=float, default=0.9, help="Tsipras robust-feature agreement probability, in (0.5, 1)")
    g.add_argument("--d", type=int, default=100, help="number of non-robust features")
    g.add_argument("--eta", type=float, default=0.2, help="non-robust amplitude eta")
    g.add_argument("--sigma-n", type=float, default=1.0, help="non-robust spread sigma_n")


def _add_sam_norm_option(p):
    p.add_argument("--sam-norm", choices=SAM_NORMS, default=None,
                   help="sam-fixed-scale margin drop: full = rho*tau*||x|| (T5, default), "
                        "projected = rho*tau*||P_w x|| (the exact fixed-scale ascent; P_w projects out the weight "
                        "direction)")


#: Bytes per non-robust feature that solving needs at least (a few float64 vectors of length d and the
#: Monte-Carlo checks' samples); a --d beyond the machine's memory is refused before anything is allocated.
BYTES_PER_FEATURE = 128


def check_d(d: int) -> None:
    """ValueError naming --d when ``d`` non-robust features cannot fit in this machine's memory."""
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    if d * BYTES_PER_FEATURE > ram:
        raise ValueError(f"--d {d} needs at least {d * BYTES_PER_FEATURE / 2**30:.1f} GiB, more than the "
                         f"{ram / 2**30:.1f} GiB of memory here; choose a --d of at most {ram // BYTES_PER_FEATURE}")


def _model_from_args(a):
    check_d(a.d)
    if a.model == "tsipras":
        return TsiprasModel(p=a.p, d=a.d, eta=a.eta, sigma_n=a.sigma_n)
    return FeatureModel(k=a.k, mu_r=a.mu_r, sigma_r=a.sigma_r, d=a.d, eta=a.eta, sigma_n=a.sigma_n)


def _parse_eps_grid(text: str):
    """'inf:0.1,inf:0.2,2:0.5' -> [("inf", 0.1), ("inf", 0.2), (2.0, 0.5)]; a bare number means l_inf."""
    out = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        norm, _, eps = item.rpartition(":")
        norm = norm or "inf"
        try:
            eps = float(eps)
        except ValueError:
            raise ValueError(f"eps-grid entry {item!r} is not NORM:EPS") from None
        try:   # l_inf keeps its spelling, l2 becomes 2.0 (samrobust.threat's spellings of both)
            norm = norm if threat.parse_norm(norm) is threat.Norm.LINF else 2.0
        except ValueError:
            norm = float(norm.lstrip("lL"))     # any other l_p norm, p >= 1
        metrics.dual_exponent(norm)
        out.append((norm, metrics.check_nonnegative("eps", eps)))
    if not out:
        raise ValueError("eps-grid must list at least one NORM:EPS entry")
    return out


def _model_dict(model):
    return {"type": type(model).__name__, **dataclasses.asdict(model)}


def _fmt(x, width=8, prec=4):
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-".rjust(width)
    return f"{x:{width}.{prec}f}"


def _table(rows, strength_name) -> str:
    keys = list(rows[0]["robust_accuracy"]) if rows else []
    head = [strength_name.rjust(8), "lam".rjust(8), "clean".rjust(8)] + [k.rjust(9) for k in keys] + [
        "reliance".rjust(8), "w_rob".rjust(8), "w_nonrob".rjust(8)]
    lines = [" ".join(head)]
    for r in rows:
        cells = [_fmt(r["strength"]), _fmt(r["lam"]), _fmt(r["clean_accuracy"])]
        cells += [_fmt(r["robust_accuracy"][k], 9) for k in keys]
        cells += [_fmt(r["robust_reliance"]), _fmt(r["robust_weight"]), _fmt(r["nonrobust_weight"])]
        lines.append(" ".join(cells))
    return "\n".join(lines)


def _cmd_derive(a):
    if a.write_docs:
        changed = write_docs(a.write_docs)
        print(f"{a.write_docs}: generated section {'rewritten' if changed else 'already current'}")
        return
    if a.markdown:
        sys.stdout.write(render_markdown())
        return
    for d in derive_all():
        print(d.render(latex=a.latex))
        print()


def _check_sam_norm_option(a, methods):
    if a.sam_norm is not None and "sam-fixed-scale" not in methods:
        raise ValueError("--sam-norm applies only to method sam-fixed-scale")


def _cmd_solve(a):
    model = _model_from_args(a)
    grid = _parse_eps_grid(a.eps_grid)
    _check_sam_norm_option(a, [a.method])
    sol = solve(model, a.method, a.strength, tau=a.tau, checks=a.checks, sam_norm=a.sam_norm)
    out = {"model": _model_dict(model), **sol.to_dict(grid, full_weights=True)}
    if a.json:
        print(json.dumps(out, indent=2))
        return
    print(f"{a.method} at strength {a.strength:g}" + (f", tau {a.tau:g}" if a.tau is not None else "")
          + (f", {sol.sam_norm} norm" if sol.sam_norm is not None else "")
          + f" on {type(model).__name__}({', '.join(f'{k}={v}' for k, v in dataclasses.asdict(model).items())})")
    print(f"  robust weight      {out['robust_weight']:.6f}")
    print(f"  non-robust weight  {out['nonrobust_weight']:.6f} (mean; sd {out['nonrobust_weight_sd']:.2e})")
    print(f"  ||v||_2            {out['weight_norm']:.6f}")
    if out["lam"] is not None:
        print(f"  lambda             {out['lam']:.6f}")
    print(f"  clean accuracy     {out['clean_accuracy']:.6f}")
    for k, val in out["robust_accuracy"].items():
        print(f"  robust {k:<11} {val:.6f}")
    print(f"  robust reliance    {out['robust_reliance']:.6f}")
    print(f"  population loss    {out['loss']:.6f}   (method objective {out['objective']:.6f})")
    for k, val in out["info"].items():
        print(f"  {k}: {val}")


def _summaries(model, curves, clean_tol, first_key):
    """T6 read-outs: SAM's no-cost robustness gain; AT's drop to robust-feature-only accuracy at eps >= eta."""
    out = {}
    for method, rows in curves.items():
        if not rows:
            continue
        base = rows[0]
        if method.startswith("sam"):
            ok = [r for r in rows if base["clean_accuracy"] - r["clean_accuracy"] <= clean_tol]
            best = max(ok, key=lambda r: r["robust_accuracy"][first_key])
            out[method] = {
                "clean_tolerance": clean_tol,
                "largest_strength_within_tolerance": max(r["strength"] for r in ok),
                "best_robust_within_tolerance": {"strength": best["strength"], "attack": first_key,
                                                 "robust_accuracy": best["robust_accuracy"][first_key],
                                                 "clean_accuracy": best["clean_accuracy"],
                                                 "gain_over_strength_0": best["robust_accuracy"][first_key]
                                                 - base["robust_accuracy"][first_key]},
            }
        elif method == "at-linf" and isinstance(model, FeatureModel):
            dropped = [r for r in rows if abs(r["nonrobust_weight"]) == 0.0]
            out[method] = {
                "eta": model.eta,
                "first_strength_with_nonrobust_dropped": dropped[0]["strength"] if dropped else None,
                "clean_accuracy_there": dropped[0]["clean_accuracy"] if dropped else None,
                "robust_feature_only_accuracy": float(metrics.clean_accuracy(
                    model, np.where(model.robust_mask, 1.0, 0.0))),
            }
    return out


def _tradeoff_inputs(a):
    """Validated inputs of ``tradeoff``: (model, eps grid with the summary attack appended if
    absent, label of the summary attack); bad options raise ValueError naming the parameter."""
    model = _model_from_args(a)
    grid = _parse_eps_grid(a.eps_grid)
    summary_attack = _parse_eps_grid(a.summary_attack)
    if len(summary_attack) != 1:
        raise ValueError("summary-attack must be a single NORM:EPS entry")
    if summary_attack[0] not in grid:
        grid.append(summary_attack[0])
    summary_key = attack_label(*summary_attack[0])
    _check_sam_norm_option(a, a.methods)
    if a.num < 2:
        raise ValueError(f"num must be at least 2, got {a.num}")
    for name in ("rho_max", "eps_max"):
        if metrics.check_nonnegative(name.replace("_", "-"), getattr(a, name)) == 0.0:
            raise ValueError(f"{name.replace('_', '-')} must be positive")
    return model, grid, summary_key


def _tradeoff_curves(a, model, grid) -> dict:
    """One trade-off curve per method of ``a.methods``: ``a.num`` strengths from 0 to --rho-max
    (SAM) or --eps-max (AT); --tau and --sam-norm go to sam-fixed-scale only."""
    curves = {}
    for method in a.methods:
        if method == "st":
            raise ValueError("method st has no strength; use solve --method st")
        top = a.rho_max if method.startswith("sam") else a.eps_max
        strengths = np.linspace(0.0, top, a.num)
        fixed = method == "sam-fixed-scale"
        curves[method] = tradeoff(model, method, strengths, eps_grid=grid, tau=a.tau if fixed else None,
                                  progress=a.progress, sam_norm=a.sam_norm if fixed else None)
    return curves


def _strength_name(method: str) -> str:
    return "rho" if method.startswith("sam") else "eps"


def _write_tradeoff(path, out, model, tau, sam_norm) -> None:
    """The result ``out`` as JSON at ``path`` and its tables and summary as markdown next to it
    (same stem, .md); both written atomically."""
    write_text_atomic(path, json.dumps(out, indent=2))
    md = [f"# linear_theory tradeoff ({type(model).__name__}, tau={tau}"
          + (f", sam-norm={sam_norm})" if sam_norm else ")"), ""]
    for method, rows in out["curves"].items():
        md += [f"## {method}", "", "```", _table(rows, _strength_name(method)), "```", ""]
    md += ["## summary", "", "```", json.dumps(out["summary"], indent=2), "```", ""]
    write_text_atomic(os.path.splitext(path)[0] + ".md", "\n".join(md))


def _print_tradeoff(a, out) -> None:
    """The human-readable output of ``tradeoff``: one table per method, the summaries, wall time."""
    for method, rows in out["curves"].items():
        fixed = method == "sam-fixed-scale"
        print(f"== {method}" + (f" (tau {a.tau:g}, {out['sam_norm']} norm)" if fixed else ""))
        print(_table(rows, _strength_name(method)))
        print()
    for method, s in out["summary"].items():
        print(f"summary {method}: {json.dumps(s)}")
    print(f"wall time {out['wall_time_s']:.2f} s for {a.num} strengths x {len(a.methods)} methods")


def _cmd_tradeoff(a):
    """``tradeoff``: sweep each method's strength, summarise (T6), print and optionally write."""
    model, grid, summary_key = _tradeoff_inputs(a)
    t0 = time.perf_counter()
    curves = _tradeoff_curves(a, model, grid)
    wall = time.perf_counter() - t0
    sam_norm = (a.sam_norm or "full") if "sam-fixed-scale" in a.methods else None
    out = {"model": _model_dict(model), "tau": a.tau, "sam_norm": sam_norm, "eps_grid": [[str(n), e] for n, e in grid],
           "curves": curves, "summary": _summaries(model, curves, a.clean_tol, summary_key), "wall_time_s": wall}
    if a.out:
        _write_tradeoff(a.out, out, model, a.tau, sam_norm)
    if a.json:
        print(json.dumps(out, indent=2))
        return
    _print_tradeoff(a, out)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m linear_theory",
                description="SAM and adversarial training as feature perturbations in a linear model (docs/theory.md).")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    d = sub.add_parser("derive", help="print the sympy derivations of L1-L4 and T1-T5")
    d.add_argument("--latex", action="store_true", help="print the derived expressions as LaTeX")
    d.add_argument("--markdown", action="store_true",
                   help="print the markdown of the generated section of docs/theory.md")
    d.add_argument("--write-docs", metavar="PATH", default=None,
                   help="rewrite the generated section of PATH (docs/theory.md) from the derivations")
    d.set_defaults(func=_cmd_derive)

    s = sub.add_parser("solve", help="population optimum for one method and strength")
    s.add_argument("--method", required=True, choices=METHODS,
                   help="st (T1), at-linf (T3), at-l2 (T4), sam (T2, unconstrained), sam-fixed-scale (T5, needs --tau)")
    s.add_argument("--strength", type=float, default=0.0, help="eps for AT, rho for SAM (>= 0; 0 for st)")
    s.add_argument("--tau", type=float, default=None, help="fixed weight norm for sam-fixed-scale")
    _add_sam_norm_option(s)
    s.add_argument("--eps-grid", default="inf:0.1,inf:0.2,inf:0.3,2:0.5,2:1",
                   help="attack radii for robust accuracies, comma-separated NORM:EPS (NORM inf, 2 or p >= 1)")
    s.add_argument("--checks", action="store_true",
                   help="for sam/sam-fixed-scale also compute the independent minimiser and report the deviation")
    s.add_argument("--json", action="store_true", help="print one JSON object (includes the full weight vector)")
    _add_model_options(s)
    s.set_defaults(func=_cmd_solve)

    t = sub.add_parser("tradeoff", help="T6 trade-off curves: clean vs robust accuracy as the strength grows")
    t.add_argument("--methods", nargs="+", default=["sam-fixed-scale", "at-linf"],
                   choices=[m for m in METHODS if m != "st"], help="methods to sweep")
    t.add_argument("--num", type=int, default=50, help="number of strengths per method (linspace from 0)")
    t.add_argument("--rho-max", type=float, default=0.3, help="largest SAM radius rho")
    t.add_argument("--eps-max", type=float, default=0.5, help="largest AT radius eps")
    t.add_argument("--tau", type=float, default=4.0, help="fixed weight norm for sam-fixed-scale")
    _add_sam_norm_option(t)
    t.add_argument("--eps-grid", default="inf:0.1,inf:0.2,inf:0.3,2:0.5,2:1",
                   help="attack radii for robust accuracies, comma-separated NORM:EPS")
    t.add_argument("--summary-attack", default="inf:0.2",
                   help="NORM:EPS attack used for the SAM summary (best robust accuracy within --clean-tol)")
    t.add_argument("--clean-tol", type=float, default=0.005,
                   help="clean-accuracy drop counted as 'no cost' in the SAM summary (fraction, default 0.005)")
    t.add_argument("--out", default=None, help="also write the JSON here (atomically) and a .md summary next to it")
    t.add_argument("--progress", action="store_true", help="show a progress bar")
    t.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    _add_model_options(t)
    t.set_defaults(func=_cmd_tradeoff)
    return add_common(p, (
        "python -m linear_theory derive --latex            # L1-L4, T1-T5 with their sympy expressions",
        "python -m linear_theory solve --method sam-fixed-scale --strength 0.1 --tau 4 --checks",
        "python -m linear_theory tradeoff --num 50 --out runs/linear_tradeoff.json"))


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except ValueError as exc:
        parser.error(str(exc))
    except BrokenPipeError:  # output piped into e.g. `head`
        sys.stderr.close()
    return 0
