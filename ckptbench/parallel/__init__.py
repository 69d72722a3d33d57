"""Many processes: the writers of a run on this host (`spawned.LocalWriters`), and a launch's ranks (`session`).

Modules depend one way: launch (who am I) <- world (the gloo group) <- writers (jobs, replies) <- backend <- spawned,
session."""
