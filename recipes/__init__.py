"""One thin LightningCLI recipe per algorithm, each with its default config in ``configs/<name>.yaml``.

The repository keeps them in the top-level ``recipes/`` folder (``python recipes/dpo.py fit``); the package
installs them as ``lit_align.recipes``, with the configs, so ``lit-align dpo fit`` works without a clone.
"""
