"""paper_figs: regenerate every theory-vs-practice figure and REPORT.md from saved results.

``python -m paper_figs [--results DIR] [--out DIR] [--report PATH] [--formats png,pdf]``; library
entry point :func:`paper_figs.build.build`. Never trains (see paper_figs/README.md).
"""
