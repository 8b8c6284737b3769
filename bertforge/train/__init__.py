"""Training: the pretraining Trainer (pretrain.py) and its objective (mlm.py), the fine-tuning
driver (finetune.py), and the optimizer step both share (loop.py)."""
