"""Many processes: the writers of a run on this host (`LocalWriters`), and a launch's ranks (`session`).

Modules depend one way: launch (who am I, from the launcher's variables) <- world (the
gloo group) <- writers (jobs and their replies) <- spawned, backend, local, session.
"""
