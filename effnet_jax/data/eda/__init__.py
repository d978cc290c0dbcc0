"""Know the data: scan a chest X-ray set, report on it, and decide what to exclude.

scan.py        one pass over every image (raw folder/zip or prepared TFDS data)
hashing.py     exact pixel hash and perceptual hash
cleaning.py    findings (duplicates, leakage, bad images) -> what to exclude and why
(the exclusion list file the builders honour is effnet_jax/data/exclusions.py)
report.py      every number, as report.json and a console summary
figures.py     PNG figures (matplotlib, Agg)
"""
