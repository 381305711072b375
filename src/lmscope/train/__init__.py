"""Training: the loop (trainer.py), attention tracking (tracking.py), TensorBoard (tensorboard.py)
and data-parallel set-up (distributed.py)."""
