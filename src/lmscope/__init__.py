"""lmscope: train small language models on corpora of different domains and look inside them.

This package face is for users (`import lmscope`); lmscope's own modules never import it, they
import the module that defines what they need (the layers are in pyproject.toml).
"""

from lmscope.api import generate, load, logits
from lmscope.config import RunConfig, resolve_config
from lmscope.errors import LmscopeError
from lmscope.evaluate import evaluate
from lmscope.export import export_hf
from lmscope.metrics.losses import EvalResult
from lmscope.run.checkpoint import Checkpoint
from lmscope.run.run_dir import TrainResult, read_metrics
from lmscope.train.trainer import train

__all__ = [
    "Checkpoint", "EvalResult", "LmscopeError", "RunConfig", "TrainResult",
    "evaluate", "export_hf", "generate", "load", "logits", "read_metrics", "resolve_config", "train",
]
__version__ = "0.1.0"
