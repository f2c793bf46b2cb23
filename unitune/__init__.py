"""unitune: one fine-tune entrypoint over model-type and PEFT-method registries, and front-ends on one loader."""

__version__ = "0.1.0"
