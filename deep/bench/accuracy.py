"""``--accuracy-check``: short fp32 and bf16 training runs with the same seeds, clean and PGD accuracy side
by side (the speed must not cost accuracy)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Dict, Optional

import numpy as np
import torch

from samrobust.tables import table_lines

from ..images import ImageData
from ..datasets import dataset_info
from ..robustness import evaluate, parse_attack
from ..train import TrainConfig, runtime_flags, fit, resolve_device

__all__ = ["AccuracyCheckConfig", "accuracy_check", "format_accuracy"]


@dataclass
class AccuracyCheckConfig:
    """Short fp32 and bf16 training runs with the same seeds (``--accuracy-check``); defaults: digits
    (scikit-learn, deep.run's digits protocol: width 8, batch 64, lr 0.05) for a few epochs."""
    dataset: str = "digits"              # digits | fashion-mnist
    methods: tuple = ("st", "sam")
    seeds: tuple = (0, 1)
    epochs: int = 5
    width: int = 8
    batch_size: int = 64
    lr: float = 0.05
    rho: float = 0.1
    eps: float = 0.05                    # l_inf radius of the PGD evaluation
    attack_steps: int = 10
    n_train: Optional[int] = None        # first n training / test images (None: all)
    n_test: Optional[int] = None
    data_dir: Optional[str] = None       # Fashion-MNIST idx files (None: the Debian package's)

    def __post_init__(self):
        if self.dataset not in ("digits", "fashion-mnist"):
            raise ValueError(f"accuracy-check dataset must be digits or fashion-mnist, got {self.dataset!r}")
        self.methods, self.seeds = tuple(self.methods), tuple(int(s) for s in self.seeds)
        if not self.methods or any(m not in ("st", "sam", "at") for m in self.methods) or not self.seeds:
            raise ValueError(f"accuracy-check methods must be a non-empty subset of st, sam, at and seeds "
                             f"non-empty, got {self.methods!r}, {self.seeds!r}")
        for name in ("epochs", "width", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"accuracy-check {name} must be >= 1, got {getattr(self, name)!r}")


def _accuracy_data(acfg: AccuracyCheckConfig, device: torch.device):
    from ..datasets import load_digits_split, load_fashion_mnist
    train, test = load_digits_split() if acfg.dataset == "digits" else load_fashion_mnist(acfg.data_dir)
    return train.subset(acfg.n_train).to(device), test.subset(acfg.n_test).to(device)


def _accuracy_run(acfg: AccuracyCheckConfig, method: str, seed: int, precision: str, train: ImageData,
                  test: ImageData, device: torch.device) -> Dict:
    """deep.train.fit, then deep.robustness.evaluate (fp32; clean and PGD) of one (method, seed, precision)."""
    fast = precision == "bf16"
    tc = TrainConfig(dataset=acfg.dataset, method=method, rho=acfg.rho, eps=acfg.eps, epochs=acfg.epochs,
                     batch_size=acfg.batch_size, width=acfg.width, lr=acfg.lr, seed=seed, bf16=fast,
                     channels_last=fast, device=str(device))
    bf16, channels_last, _ = runtime_flags(tc, device)
    res = fit(tc, train, progress=False)
    attack = parse_attack(f"linf:{acfg.eps!r}")
    ev = evaluate(res.model, test, (attack,), steps=acfg.attack_steps, batch_size=500, seed=seed,
                  channels_last=channels_last, sharded=False)
    return {"method": method, "seed": seed, "precision": precision, "bf16_used": bf16,
            "channels_last": channels_last, "clean_acc": ev["clean_acc"], "robust_acc": ev["robust"][attack.label],
            "train_loss": res.history[-1]["train_loss"], "train_s": res.train_time_s}


def accuracy_check(acfg: AccuracyCheckConfig, device="cpu",
                   progress: Optional[Callable[[str], None]] = None) -> Dict:
    """fp32 vs bf16 (+ channels_last) training with the same seeds; clean and PGD accuracy of each run and,
    per method, the mean over seeds and the largest |bf16 - fp32| difference of a seed."""
    device = resolve_device(str(device))
    train, test = _accuracy_data(acfg, device)
    runs = []
    for method in acfg.methods:
        for seed in acfg.seeds:
            for precision in ("fp32", "bf16"):
                if progress:
                    progress(f"accuracy check {method} seed {seed} {precision}")
                runs.append(_accuracy_run(acfg, method, seed, precision, train, test, device))
    summary = {}
    for method in acfg.methods:
        by = {(r["seed"], r["precision"]): r for r in runs if r["method"] == method}
        s = {}
        for key in ("clean_acc", "robust_acc"):
            for prec in ("fp32", "bf16"):
                s[f"{key}_{prec}"] = float(np.mean([by[seed, prec][key] for seed in acfg.seeds]))
            fp32 = [by[seed, "fp32"][key] for seed in acfg.seeds]
            s[f"{key}_max_abs_diff"] = max(abs(by[seed, "bf16"][key] - a) for seed, a in zip(acfg.seeds, fp32))
            s[f"{key}_fp32_seed_spread"] = max(fp32) - min(fp32)
        summary[method] = s
    return {"config": asdict(acfg), "device": str(device), "n_train": len(train), "n_test": len(test),
            "attack": parse_attack(f"linf:{acfg.eps!r}").label, "runs": runs, "summary": summary,
            "bf16_native": all(r["bf16_used"] for r in runs if r["precision"] == "bf16")}


def format_accuracy(acc: Dict) -> str:
    """Markdown: clean and PGD accuracy, fp32 vs bf16 side by side, per run and mean per method."""
    c = acc["config"]
    title = dataset_info(c["dataset"]).title
    lines = [f"Accuracy check: fp32 vs bf16 autocast + channels_last training (same seeds), {title} "
             f"({acc['n_train']} train / {acc['n_test']} test images), width {c['width']}, {c['epochs']} epochs, "
             f"batch {c['batch_size']}, lr {c['lr']}, SAM rho {c['rho']}; evaluation fp32, PGD-{c['attack_steps']} "
             f"{acc['attack']}." + ("" if acc["bf16_native"] else
                                    " This CPU has no native bf16: the bf16 runs fell back to fp32."), ""]
    body = []
    by = {(r["method"], r["seed"], r["precision"]): r for r in acc["runs"]}
    for method in c["methods"]:
        for seed in c["seeds"]:
            a, b = by[method, seed, "fp32"], by[method, seed, "bf16"]
            body.append([method.upper(), seed] + [f"{v:.3f}" for v in
                         (a["clean_acc"], b["clean_acc"], a["robust_acc"], b["robust_acc"])])
        s = acc["summary"][method]
        body.append([method.upper(), "mean"] + [f"{s[k]:.3f}" for k in
                    ("clean_acc_fp32", "clean_acc_bf16", "robust_acc_fp32", "robust_acc_bf16")])
    lines += table_lines(["method", "seed", "clean fp32", "clean bf16", "PGD fp32", "PGD bf16"], body)
    worst = max(max(s["clean_acc_max_abs_diff"], s["robust_acc_max_abs_diff"]) for s in acc["summary"].values())
    spread = max(max(s["clean_acc_fp32_seed_spread"], s["robust_acc_fp32_seed_spread"])
                 for s in acc["summary"].values())
    lines += ["", f"Largest |bf16 - fp32| accuracy difference of one seed: {worst:.3f} (for scale, the largest "
                  f"spread between seeds in fp32: {spread:.3f})."]
    return "\n".join(lines)
