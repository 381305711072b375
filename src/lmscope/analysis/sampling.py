"""Sampling studies: one generation per sampling setting, side by side.

`top_p_sweep` continues the same prompt once per nucleus threshold p (and once greedily), each
from the same seed, so the rows differ only by the setting: low p stays close to greedy decoding,
p = 1.0 samples from the whole distribution. `compute` returns a `SweepResult`, whose `save(dir)`
writes top_p_sweep.md and .csv (`load(dir)` reads the CSV back).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lmscope.api import generate
from lmscope.errors import LmscopeError
from lmscope.generate import DEFAULT_TEMPERATURE
from lmscope.io import atomic_write_text
from lmscope.render.tables import markdown_table, read_csv, write_csv


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


@dataclass
class SweepResult:
    """One prompt continued once per sampling setting, every row from the same seed."""

    prompt: str
    rows: list[tuple[str, str]]  # (setting: "greedy" or p, generated text without the prompt)
    seed: int = 0
    temperature: float = DEFAULT_TEMPERATURE

    def save(self, out_dir) -> list[Path]:
        return write_sweep(self.rows, self.prompt, out_dir, seed=self.seed,
                           temperature=self.temperature)

    @classmethod
    def load(cls, out_dir) -> SweepResult:
        """The rows of top_p_sweep.csv (the seed and temperature are in the Markdown only)."""
        table = read_csv(Path(out_dir) / "top_p_sweep.csv")
        return cls(table[0]["prompt"] if table else "",
                   [(r["top_p"], r["generated"]) for r in table])


def compute(checkpoint, prompt: str, top_ps: list[float], *, greedy: bool = True,
            max_new_tokens: int = 100, temperature: float = DEFAULT_TEMPERATURE, seed: int = 0,
            precision: str = "float32") -> SweepResult:
    """"greedy" first (when asked), then one row per p."""
    settings = ([("greedy", {"greedy": True})] if greedy else []) + [
        (f"{p:g}", {"top_p": p, "temperature": temperature}) for p in top_ps]
    return SweepResult(prompt, [(name, generate(checkpoint, prompt, max_new_tokens=max_new_tokens,
                                                seed=seed, precision=precision, **kwargs))
                                for name, kwargs in settings], seed, temperature)


def top_p_sweep(checkpoint, prompt: str, top_ps: list[float], *, greedy: bool = True,
                max_new_tokens: int = 100, temperature: float = DEFAULT_TEMPERATURE, seed: int = 0,
                precision: str = "float32") -> list[tuple[str, str]]:
    """[(setting, generated text)]: the rows of `compute`."""
    return compute(checkpoint, prompt, top_ps, greedy=greedy, max_new_tokens=max_new_tokens,
                   temperature=temperature, seed=seed, precision=precision).rows


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
