"""The training library of train.py and validate.py: data, augmentation, evaluation, fine-tuning,
checkpoint saving, preemption and restarts, and the checks of a run's settings."""
