"""Training engine: optimizers and schedules, checkpoints, the distributed training loop."""
