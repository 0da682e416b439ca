"""Stage 2, model: ESM-2 backbones, the classifier, fine-tuning."""
