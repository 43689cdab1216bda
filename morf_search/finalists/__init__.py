"""Finalists: choose them on the front, fine-tune, re-parameterize, verify, time and export them.

``select`` picks the archs; ``finalize`` fine-tunes and checks each; ``export`` writes timm's
layout (config.json, model.safetensors, model card, optional ONNX) and loads it back.
"""
