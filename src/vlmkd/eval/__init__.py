"""Evaluation: metrics (`vlmkd.eval.metrics`), representation metrics (`vlmkd.eval.representation`), reports.

Kept free of imports so that `import vlmkd.eval.metrics` stays light.
"""
