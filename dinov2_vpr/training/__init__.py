"""Training: the trainer, checkpoints, batch samplers (pairs, P x K places) and losses."""
