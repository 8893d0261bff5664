"""SYNTH, the synthetic AU dataset: cartoon faces drawn from AU labels, the same pixels on every machine."""
