"""Measures of models and data: dataset similarity (DES) and model distance (MPD), per-layer weight
changes and their ranks, and hidden representations. Strategies and the analysis both use them."""
