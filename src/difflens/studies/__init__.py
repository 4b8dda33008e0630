"""Studies: the experiments behind the figures the docs quote, written against the public API (`import difflens as
dl`) the way a researcher's script would be, so they sit above it with the other faces.

    truth_study.py     dictionaries x seeds, the random-model control across sites and steps, sizes
    families_study.py  SAE families at equal width and k; one dictionary across steps vs one per step
    truth_scan.py      one small SAE per (site, step): where the world's concepts live
    extra_concepts.py  candidate concept families (tone, edge, background position) beside the labels
"""
