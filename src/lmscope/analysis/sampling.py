"""Sampling studies: one generation per sampling setting, side by side.

`top_p_sweep` continues the same prompt once per nucleus threshold p (and once greedily), each
from the same seed, so the rows differ only by the setting: low p stays close to greedy decoding,
p = 1.0 samples from the whole distribution.
"""

from __future__ import annotations

from pathlib import Path

from lmscope.analysis.common import markdown_table, write_csv
from lmscope.errors import LmscopeError
from lmscope.io import atomic_write_text


def parse_top_ps(text: str) -> list[float]:
    """'0.2,0.5,1.0' -> [0.2, 0.5, 1.0]; every value must be in (0, 1]."""
    values = []
    for item in (s.strip() for s in text.split(",")):
        try:
            p = float(item)
        except ValueError:
            raise LmscopeError(f"--sweep-top-p takes numbers in (0, 1] separated by commas, "
                               f"got {item!r}") from None
        if not 0.0 < p <= 1.0:
            raise LmscopeError(f"--sweep-top-p value {item} is outside (0, 1]")
        values.append(p)
    if not values:
        raise LmscopeError("--sweep-top-p is empty: give values like 0.2,0.5,0.95,1.0")
    return values


def top_p_sweep(checkpoint, prompt: str, top_ps: list[float], *, greedy: bool = True,
                max_new_tokens: int = 100, temperature: float = 1.0, seed: int = 0,
                precision: str = "float32") -> list[tuple[str, str]]:
    """[(setting, generated text)]: "greedy" first (when asked), then one row per p."""
    import lmscope

    settings = ([("greedy", {"greedy": True})] if greedy else []) + [
        (f"{p:g}", {"top_p": p, "temperature": temperature}) for p in top_ps]
    return [(name, lmscope.generate(checkpoint, prompt, max_new_tokens=max_new_tokens, seed=seed,
                                    precision=precision, **kwargs))
            for name, kwargs in settings]


def sweep_table(rows: list[tuple[str, str]], prompt: str) -> str:
    """The rows as a Markdown table, prompt included, newlines shown as ⏎."""
    return markdown_table(["top-p", "generated (prompt + continuation)"],
                          [[name, (prompt + text).replace("\n", " ⏎ ")] for name, text in rows])


def write_sweep(rows: list[tuple[str, str]], prompt: str, out_dir, *, seed: int,
                temperature: float) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = out / "top_p_sweep.md"
    atomic_write_text(md, f"# Nucleus sampling sweep\n\nPrompt {prompt!r}, seed {seed}, "
                          f"temperature {temperature:g}; each row starts from the same seed.\n\n"
                      + sweep_table(rows, prompt))
    return [md, write_csv(out / "top_p_sweep.csv", ["top_p", "prompt", "generated"],
                          [[name, prompt, text] for name, text in rows])]
