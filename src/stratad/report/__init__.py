"""Heatmap overlays, plots and reports."""
