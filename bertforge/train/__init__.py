"""Training: the shared optimizer step (loop.py) and the pretraining trainer (pretrain.py)."""
