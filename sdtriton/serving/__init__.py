"""Pure serving logic shared by the Triton models and the no-Triton baselines (imports no ``pb_utils``)."""
