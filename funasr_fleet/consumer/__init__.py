"""One consumer process: one engine, one job at a time (connection loop, job handler, boot).

- ``connection``: the thread that owns the pika connection, and the worker thread for jobs;
- ``handler``: one job from message to acked result;
- ``main``: boot (settings, threads, model, broker), signals, exit codes.
"""
