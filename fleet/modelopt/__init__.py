"""Model optimization behind ``fleet model optimize``: quantize, prune, measure, report.

Owns turning one fp32 ONNX model into its optimized variants (ONNX Runtime static or dynamic
int8, magnitude-pruned, TFLite full-integer when TensorFlow is installed) and the report that
compares them on this machine (size, p50/p99 latency, accuracy or cosine similarity). The
reference-model build scripts in ``models/`` call the same code, so a committed int8 model is
exactly what the command would make.
"""
