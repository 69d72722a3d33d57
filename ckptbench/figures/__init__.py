"""The figures, drawn from documents: they measure and compute nothing.

common (what every figure shares), main (the 6-panel figure), claims, sweep, scaling, and
drawing (every figure of a results document at once). The figures of tune and explain
live in their own packages and use common.
"""
