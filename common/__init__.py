"""Pieces every package shares: the threat-model vocabulary (``common.threat``), atomic file writes
and strict JSON (``common.files``) and the seed mixer (``common.seeds``).

``common`` imports nothing from linear_theory/, simulations/, deep/ or paper_figs/ (tests/test_layout.py).
"""
