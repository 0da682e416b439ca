"""Knowledge neurons in protein language models (ESM-2, EC classification)."""

__version__ = "0.1.0"
