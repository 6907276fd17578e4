"""LAMP Studio's methods against Hugging Face PEFT's prompt tuning, side by side in one process.

`python -m benchmarks --out DIR` (or `lamp bench`) loads one frozen backbone and measures, on the same batches and
seed: training step time and throughput, peak memory above the loaded model, inference latency, trainable
parameters and artifact size, accuracy after a fixed budget of steps, and how step time and memory grow with the
prompt's length. Every figure is also given as a ratio to PEFT prompt tuning measured in the same run. The report
(Markdown, CSV, JSON and plotly charts) goes to the output directory.
"""
