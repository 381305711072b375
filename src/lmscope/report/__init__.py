"""Plots and reports of runs and studies."""
