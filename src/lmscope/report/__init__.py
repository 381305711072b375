"""The report: one self-contained HTML page for a run or a study (html.py), with views drawn
from the probes' typed results."""
