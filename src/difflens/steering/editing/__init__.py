"""The editing benchmark (`difflens bench edits`): RIEBench's protocol on the shapes world, scored by the oracle.

pairs.py      the fixed prompt-pair file (and RIEBench-format files): building, reading, validating
selection.py  RIEBench feature selection (normalised masked mean activation, target minus source)
methods.py    the edit methods as adapter interventions (dictionary features, dense difference, random control)
scoring.py    oracle scores (success, preservation, clean), PSNR outside the mask, bootstrap intervals
run.py        the benchmark loop (`BenchConfig`, `run_edit_bench`), results.json, table and curves
cli.py        `difflens bench edits`
"""
