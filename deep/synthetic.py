"""The generated robust / non-robust image dataset of docs/protocol.md ("synthetic") and its probe variants.

The generated dataset mirrors the linear feature model of docs/theory.md section 1 in images:
every class y has a smooth, large-amplitude *robust* pattern R_y whose presence varies strongly between
images, and a tiny-amplitude (2/255 per pixel by default), nearly deterministic, high-frequency
*non-robust* pattern N_y: a sign tile of ``nonrobust_period`` x ``nonrobust_period`` pixels (x 3 channels;
for K <= 15 at period 4 the tiles are orthogonal Hadamard rows with a random sign per channel) repeated over
the image. The repetition makes the non-robust feature local, as texture is in
natural images: a convolutional network can detect it anywhere and its global average pooling adds up the
weak per-pixel evidence (a pattern of independent signs per pixel would be invisible after pooling)::

    x = clip( 1/2 + a_r * sum_k c_k R_k + a_n * (1 + s_n z) N_y + sigma_pix * xi , 0, 1 )
    c = e_y + s_r * zeta,   zeta ~ N(0, I_K),  z ~ N(0, 1),  xi ~ N(0, I)

R_k are orthonormal (unit RMS per pixel), so the robust feature alone classifies with the accuracy of the
argmax of K Gaussians one of which is shifted by 1/s_r (about 81% at s_r = 0.4, K = 10); the non-robust
pattern is individually weak per pixel (a_n << sigma_pix) but aggregated over 3072 pixels strongly
predictive, and an l_inf perturbation of size a_n erases it. Probe variants (same images, same noise):
``nonrobust_removed`` (a_n = 0), ``nonrobust_swapped`` (N_{(y+1) mod K} instead of N_y, label still y),
``robust_removed`` (a_r = 0).
"""
from __future__ import annotations

from dataclasses import dataclass, asdict
from typing import Tuple

import torch
import torch.nn.functional as F

from samrobust.seeds import DATA_SEED_MULT, DATA_SEED_OFFSET

from .images import ImageData

__all__ = ["SyntheticSpec", "make_synthetic", "synthetic_patterns", "PROBE_VARIANTS"]


PROBE_VARIANTS = ("clean", "nonrobust_removed", "nonrobust_swapped", "robust_removed")


@dataclass(frozen=True)
class SyntheticSpec:
    """Parameters of the generated robust / non-robust image dataset (module docstring formula).

    robust_amplitude a_r: RMS per pixel of each robust pattern (large: erasing it needs eps ~ a_r).
    robust_spread s_r: spread of the robust coefficients (large: robust feature alone ~81% at 0.4).
    nonrobust_amplitude a_n: per-pixel amplitude of the sign pattern (tiny: 2/255).
    nonrobust_spread s_n: relative spread of its amplitude (small: nearly deterministic).
    pixel_noise sigma_pix: i.i.d. Gaussian pixel noise; robust_resolution: grid size of the smooth
    robust patterns before bilinear upsampling; nonrobust_period: side of the repeated sign tile
    (= image_size: one independent sign per pixel, no repetition). pattern_seed fixes the class patterns (shared by the
    train and test sets, which differ in their sample seed).
    """
    num_classes: int = 10
    image_size: int = 32
    robust_amplitude: float = 0.12
    robust_spread: float = 0.4
    nonrobust_amplitude: float = 2.0 / 255.0
    nonrobust_spread: float = 0.1
    pixel_noise: float = 0.12
    robust_resolution: int = 4
    nonrobust_period: int = 4
    pattern_seed: int = 0

    def __post_init__(self):
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")
        if self.image_size < 4:
            raise ValueError(f"image_size must be >= 4, got {self.image_size}")
        for field in ("robust_amplitude", "robust_spread", "nonrobust_amplitude", "nonrobust_spread",
                      "pixel_noise"):
            if not getattr(self, field) >= 0.0:
                raise ValueError(f"{field} must be >= 0, got {getattr(self, field)!r}")
        if not 1 <= self.nonrobust_period <= self.image_size:
            raise ValueError(f"nonrobust_period must be in [1, image_size], got {self.nonrobust_period}")
        if self.num_classes > 2 ** (3 * self.nonrobust_period ** 2 - 1):
            raise ValueError("num_classes exceeds the number of distinct non-robust tiles; raise nonrobust_period")
        if not 1 <= self.robust_resolution <= self.image_size:
            raise ValueError(f"robust_resolution must be in [1, image_size], got {self.robust_resolution}")
        if self.num_classes > 3 * self.robust_resolution ** 2:
            raise ValueError("num_classes exceeds the number of orthogonal robust patterns "
                             "(3 * robust_resolution^2); raise robust_resolution")

    def to_dict(self) -> dict:
        return asdict(self)


def synthetic_patterns(spec: SyntheticSpec) -> Tuple[torch.Tensor, torch.Tensor]:
    """(R, N): robust patterns (K,3,H,W), orthonormal with unit RMS per pixel and smooth; non-robust
    sign patterns (K,3,H,W) in {-1,+1}, periodic with period ``nonrobust_period``; orthogonal when the
    period's square is a power of two larger than K (Hadamard rows), else random and distinct up to sign.
    Deterministic from ``spec.pattern_seed``."""
    K, S, r = spec.num_classes, spec.image_size, spec.robust_resolution
    g = torch.Generator().manual_seed(int(spec.pattern_seed))
    low = torch.randn(K, 3, r, r, generator=g, dtype=torch.float64)
    smooth = F.interpolate(low, size=(S, S), mode="bilinear", align_corners=False).reshape(K, -1)
    smooth = smooth - smooth.mean(dim=1, keepdim=True)
    q, _ = torch.linalg.qr(smooth.T)  # (P, K) orthonormal columns spanning the smooth patterns
    P = smooth.shape[1]
    R = (q.T * P ** 0.5).reshape(K, 3, S, S).float()
    t = spec.nonrobust_period
    m = t * t
    if m & (m - 1) == 0 and K <= m - 1:
        # orthogonal tiles: distinct non-constant rows of the Sylvester-Hadamard matrix of order t^2 (spatial)
        # times a random sign per channel
        H = torch.ones(1, 1)
        while H.shape[0] < m:
            H = torch.cat([torch.cat([H, H], 1), torch.cat([H, -H], 1)], 0)
        rows = torch.randperm(m - 1, generator=g)[:K] + 1
        chan = (torch.randint(0, 2, (K, 3), generator=g) * 2 - 1).float()
        tiles = chan[:, :, None, None] * H[rows].reshape(K, 1, t, t)
    else:
        while True:  # random tiles, distinct also up to a global sign flip
            tiles = (torch.randint(0, 2, (K, 3, t, t), generator=g) * 2 - 1).float()
            flat = tiles.reshape(K, -1)
            gram = (flat @ flat.T).abs() - torch.eye(K) * flat.shape[1]
            if K == 1 or gram.max() < flat.shape[1]:
                break
    reps = -(-S // t)
    N = tiles.repeat(1, 1, reps, reps)[:, :, :S, :S].contiguous()
    return R, N


def make_synthetic(n: int, seed: int, spec: SyntheticSpec = SyntheticSpec(),
                   variant: str = "clean") -> ImageData:
    """``n`` images of the generated dataset (float32 in [0,1], CPU), deterministic from ``seed``.

    ``variant`` in PROBE_VARIANTS: all variants with the same (n, seed) share labels, coefficients and
    noise, and differ only in the feature that is removed or swapped.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if variant not in PROBE_VARIANTS:
        raise ValueError(f"variant must be one of {PROBE_VARIANTS}, got {variant!r}")
    K, S = spec.num_classes, spec.image_size
    R, N = synthetic_patterns(spec)
    g = torch.Generator().manual_seed(int(seed) * DATA_SEED_MULT + DATA_SEED_OFFSET)
    y = torch.randint(0, K, (n,), generator=g)
    zeta = torch.randn(n, K, generator=g)
    z = torch.randn(n, generator=g)
    xi = torch.randn(n, 3, S, S, generator=g)
    coef = F.one_hot(y, K).float() + spec.robust_spread * zeta
    robust = spec.robust_amplitude * torch.einsum("nk,kchw->nchw", coef, R)
    nr_class = (y + 1) % K if variant == "nonrobust_swapped" else y
    nonrobust = (spec.nonrobust_amplitude * (1.0 + spec.nonrobust_spread * z)).view(n, 1, 1, 1) * N[nr_class]
    x = 0.5 + spec.pixel_noise * xi
    if variant != "robust_removed":
        x = x + robust
    if variant != "nonrobust_removed":
        x = x + nonrobust
    return ImageData(x.clamp_(0.0, 1.0), y, K)

