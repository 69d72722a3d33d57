"""The figures, drawn from documents: they measure and compute nothing.

common (what every figure shares), main (the 6-panel figure), claims, sweep, scaling, and drawing (every figure of a
results document at once). tune's figure lives in its own package and uses common.
"""
