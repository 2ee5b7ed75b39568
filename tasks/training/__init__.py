"""The training loop every training command shares: its settings (config.py: TrainConfig),
the loop itself with checkpoints, resume, signals and mixed precision (trainer.py), what it
evaluates and logs (evaluation.py), and the data-parallel glue (parallel.py)."""
