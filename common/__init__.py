"""Pieces every package shares: the threat-model vocabulary (``common.threat``), atomic file writes
and strict JSON (``common.files``), the seed mixer (``common.seeds``), and the two algorithms used by both
simulations/ and deep/: PGD (``common.attacks``: ``pgd``, docs/theory.md L1) and the SAM step
(``common.sam``: ``sam_perturbation``, the ``SAM`` optimizer wrapper, ``frozen_bn_stats``; L2-L4).

``common`` imports nothing from linear_theory/, simulations/, deep/ or paper_figs/ (tests/test_layout.py).
"""
