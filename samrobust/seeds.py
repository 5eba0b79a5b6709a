"""The seed mixer: one formula that turns a base seed and a few counters into a generator seed.

``mix_seed(seed, (value, MULT), ...)`` = ``(seed * SEED_MULT + sum(value * MULT)) % modulus``: the
existing deep/ formulas written with named constants, so every seed value is unchanged.

The offsets of simulations/ (linear models) are named here too, with their values unchanged: they keep
the generators of different uses apart from the data seeds 0, 1, 2, ... of the training jobs.
"""
from __future__ import annotations

__all__ = ["SEED_MULT", "EPOCH_MULT", "RANK_MULT", "BATCH_MULT", "ATTACK_MULT", "RESTART_MULT",
           "EVAL_RANK_MULT", "DATA_SEED_MULT", "DATA_SEED_OFFSET", "SIM_TRAIN_SEED_OFFSET",
           "S1_TEST_SEED_OFFSET", "S1_WEIGHTS_MULT", "S1_PGD_STEPS_SEED_OFFSET", "mix_seed"]

SEED_MULT = 1_000_003          # base seed (a prime, so different seeds never collide on small counters)
EPOCH_MULT = 9_176             # epoch, in the training shuffle/noise generator (deep/train.py)
RANK_MULT = 7919               # process rank, in training (deep/train.py)
BATCH_MULT = 7919              # batch index, in evaluation (deep/robustness.py)
ATTACK_MULT = 104_729          # attack index, in evaluation
RESTART_MULT = 31              # PGD restart, in evaluation
EVAL_RANK_MULT = 15_485_863    # process rank, in evaluation
DATA_SEED_MULT = 7_777_777     # generated-data seed (deep/synthetic.py): seed * DATA_SEED_MULT + DATA_SEED_OFFSET
DATA_SEED_OFFSET = 12345

# simulations/
SIM_TRAIN_SEED_OFFSET = 1000       # a job's training generator (init, shuffling, PGD starts): this + its
                                   # first data seed (simulations/experiments.py)
S1_TEST_SEED_OFFSET = 10_000       # S1 Monte-Carlo test sample and PGD start of weight vector i under
S1_WEIGHTS_MULT = 100              # attack j: S1_TEST_SEED_OFFSET + S1_WEIGHTS_MULT * i + j (claims.py)
S1_PGD_STEPS_SEED_OFFSET = 20_000  # S1 finding on l2 PGD with random start: this + the PGD steps


def mix_seed(seed, *terms, modulus: int = 2 ** 62) -> int:
    """``(int(seed) * SEED_MULT + sum(int(value) * mult for value, mult in terms)) % modulus``."""
    return (int(seed) * SEED_MULT + sum(int(v) * m for v, m in terms)) % modulus
