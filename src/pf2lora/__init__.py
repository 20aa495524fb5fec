"""pf2lora: personalized federated fine-tuning of language models with two-level LoRA."""

__version__ = "0.1.0"
