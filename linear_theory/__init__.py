"""linear_theory package."""
