"""Pieces every package shares: the threat-model vocabulary (``samrobust.threat``), atomic file writes
and strict JSON (``samrobust.files``), the seed mixer (``samrobust.seeds``), and the two algorithms used by both
simulations/ and deep/: PGD (``samrobust.attacks``: ``pgd``, docs/theory.md L1) and the SAM step
(``samrobust.sam``: ``sam_perturbation``, the ``SAM`` optimizer wrapper, ``frozen_bn_stats``; L2-L4).

``samrobust`` imports nothing from linear_theory/, simulations/, deep/ or paper_figs/ (tests/test_layout.py).
"""
