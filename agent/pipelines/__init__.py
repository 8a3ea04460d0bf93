"""Pipelines declared in config: a source, pre-processing, a model, post-processing, sinks."""
