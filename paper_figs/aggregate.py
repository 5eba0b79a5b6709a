"""Deep runs of one data set summarised over seeds for the figures and REPORT.md (mean, sample sd, count).

The grouping rule, the statistic and the radius formatter are deep/'s (:mod:`deep.aggregate`), the same
that summary.md uses: runs are averaged only when they differ in the seed alone. This module adds what
the figures need: the canonical method (st, sam, at-linf, at-l2), TeX labels and the attack to plot."""
from __future__ import annotations

from dataclasses import dataclass, field

from deep.aggregate import Stat, group_runs, group_settings
from samrobust.threat import format_eps

from .palette import canonical_method, style

__all__ = ["Stat", "ConfigSummary", "summarise_runs", "robust_keys", "pick_attack",
           "ATTACK_PREFERENCE", "PROBE_KEYS", "strength_label"]

#: Attack keys in the order the deep figure prefers (docs/protocol.md: SAM's claim is at small eps).
ATTACK_PREFERENCE = ("linf_1/255", "linf_2/255", "l2_16/255", "l2_32/255", "l2_0.5", "linf_8/255")
PROBE_KEYS = ("clean", "nonrobust_removed", "nonrobust_swapped", "robust_removed")


def strength_label(method: str, rho, eps, tex: bool = True) -> str:
    """Label of a configuration: TeX for figures ('SAM $\\rho$=0.1'), else plain text
    ('SAM rho=0.1', 'AT l_inf eps=8/255', 'ST')."""
    st = style(method)
    lab = st.label if tex else st.text
    rho_name, eps_name = (r"$\rho$", r"$\epsilon$") if tex else ("rho", "eps")
    if method == "sam" and rho is not None:
        return f"{lab} {rho_name}={rho:g}"
    if method.startswith("at") and eps is not None:
        return f"{lab} {eps_name}={format_eps(eps)}"
    return lab


@dataclass
class ConfigSummary:
    """All seeds of one (dataset, method, strength) configuration."""

    dataset: str
    method: str                # canonical: st, sam, at-linf, at-l2
    rho: float | None
    eps: float | None
    seeds: list
    clean: Stat
    robust: dict               # attack key -> Stat
    probes: dict               # probe key -> Stat (empty when no run has probes)
    wall_time_s: Stat
    images_per_s: Stat
    epochs: set = field(default_factory=set)
    settings: str = ""         # what tells this group apart from others of the same label ("" when none)
    key: str = ""              # deep.aggregate.group_key shared by the group's runs

    def _with_settings(self, label: str) -> str:
        return f"{label} ({self.settings})" if self.settings else label

    @property
    def label(self) -> str:
        return self._with_settings(strength_label(self.method, self.rho, self.eps))

    @property
    def text(self) -> str:
        return self._with_settings(strength_label(self.method, self.rho, self.eps, tex=False))

    @property
    def order_key(self):
        rank = {"st": 0, "sam": 1, "at-l2": 2, "at-linf": 3}[self.method]
        return (rank, self.rho or 0.0, self.eps or 0.0, self.settings)


def _report_label(raw: dict) -> str:
    """The row label REPORT.md gives a result (without settings): canonical method and strength."""
    method = canonical_method(raw["method"], raw.get("norm"))
    return strength_label(method, raw.get("rho") if method == "sam" else None,
                          raw.get("eps") if method.startswith("at") else None, tex=False)


def summarise_runs(runs) -> list[ConfigSummary]:
    """:class:`~paper_figs.loaders.DeepRun` records of one dataset summarised per configuration, grouped
    by :func:`deep.aggregate.group_key` (the seed is the only difference inside a group). Groups that
    share a label get the settings that tell them apart (:func:`deep.aggregate.group_settings`)."""
    groups = group_runs(runs, record=lambda r: r.raw)
    settings = group_settings({k: [r.raw for r in rs] for k, rs in groups.items()}, label=_report_label)
    out = []
    for key, rs in groups.items():
        method = canonical_method(rs[0].method, rs[0].norm)
        keys = sorted({k for r in rs for k in r.robust})
        pkeys = [k for k in PROBE_KEYS if any(r.probes and k in r.probes for r in rs)]
        out.append(ConfigSummary(
            dataset=rs[0].dataset, method=method,
            rho=rs[0].rho if method == "sam" else None, eps=rs[0].eps if method.startswith("at") else None,
            seeds=sorted(r.seed for r in rs),
            clean=Stat.of(r.clean_acc for r in rs),
            robust={k: Stat.of(r.robust.get(k) for r in rs) for k in keys},
            probes={k: Stat.of(float(r.probes[k]) for r in rs if r.probes and k in r.probes)
                    for k in pkeys},
            wall_time_s=Stat.of(r.wall_time_s for r in rs),
            images_per_s=Stat.of(r.images_per_s for r in rs),
            epochs={r.raw.get("epochs") for r in rs},
            settings=settings[key], key=key,
        ))
    return sorted(out, key=lambda c: c.order_key)


def robust_keys(configs) -> list[str]:
    """Attack keys present in any configuration, preferred ones first."""
    keys = {k for c in configs for k in c.robust}
    return [k for k in ATTACK_PREFERENCE if k in keys] + sorted(keys - set(ATTACK_PREFERENCE))


def pick_attack(configs) -> str | None:
    """The attack key the deep figure plots: the first of ATTACK_PREFERENCE present in every
    configuration (else the first present anywhere)."""
    keys = robust_keys(configs)
    for k in keys:
        if all(k in c.robust for c in configs):
            return k
    return keys[0] if keys else None
