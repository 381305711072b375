"""How numbers become files people read: CSV and Markdown tables (tables.py), PNG figures
(plots.py), and progress bars on a terminal (progress.py). Used by training (loss.png), the
probes and the study summaries."""
