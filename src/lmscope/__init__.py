"""lmscope: train small language models on corpora of different domains and look inside them."""

from lmscope.api import generate, load, logits
from lmscope.config import RunConfig, resolve_config
from lmscope.errors import LmscopeError
from lmscope.evaluate import EvalResult, evaluate
from lmscope.export import export_hf
from lmscope.train.checkpoint import Checkpoint
from lmscope.train.trainer import TrainResult, read_metrics, train

__all__ = [
    "Checkpoint", "EvalResult", "LmscopeError", "RunConfig", "TrainResult",
    "evaluate", "export_hf", "generate", "load", "logits", "read_metrics", "resolve_config", "train",
]
__version__ = "0.1.0"
