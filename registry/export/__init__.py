"""`reg export`: adapter versions merged into their base (or written as a plain PEFT directory), checked, recorded.

    exporter.py   the export itself: validate, combine (registry.modeling.merge), write, check, publish
    fidelity.py   the check: the written model's logits against the base plus the unmerged adapter
    card.py       the README.md model card of an export (plain text, no torch)
    records.py    the registry's rows of every export attempt (no torch; `reg show` lists them)

Nothing is imported here: `registry.store` reads `records.py` while the registry package is still loading,
and only `reg export` needs the rest (which imports torch when called).
"""
