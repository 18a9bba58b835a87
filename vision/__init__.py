"""Image -> numbers: decoding and the one transform, backbones, the product model, export, runtimes.

Importing `vision` never imports torch; the torch modules (backbones, model, export) are for training and
export only (`pip install .[train]`).
"""
