"""The reference rows: what users store checkpoints with instead (loaders, peers), and the device's ceiling.

files (what the file-writing rows share), loaders, peers, ceiling; backends (`BACKENDS`: each kind's back end).
"""
