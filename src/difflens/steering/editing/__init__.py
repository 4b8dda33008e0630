"""The editing benchmark (`difflens bench edits`): RIEBench's protocol, scored by the oracle on the shapes world and
against the reference generations (the model's own images of both prompts) on any model.

pairs.py          the fixed prompt-pair file (and RIEBench-format files): building, reading, validating
selection.py      RIEBench feature selection (normalised masked mean activation, target minus source)
methods.py        the edit methods as adapter interventions (dictionary features, dense difference, random control)
scoring.py        oracle scores (success, preservation, clean), PSNR outside the mask, bootstrap intervals
image_scores.py   weight-free scores against the references (PSNR / SSIM inside and outside the mask), RIEBench masks
learned_scores.py LPIPS and CLIP similarity against the references, where their weights load
run.py            the benchmark loop (`BenchConfig`, `run_edit_bench`), results.json, table and curves
cli.py            `difflens bench edits`
"""
