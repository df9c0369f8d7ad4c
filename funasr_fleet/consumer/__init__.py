"""One consumer process: one engine, one job at a time.

- ``main``: boot (settings, threads, model, broker), signals, exit codes; ``zygote``: preload = fork;
- ``loop``: the loop thread (:class:`~funasr_fleet.consumer.loop.ConsumerLoop`, its ``LoopState``),
  over ``broker`` (connection, channels, settle), ``bridge`` (the worker's calls into the loop),
  ``worker`` (the job thread), ``inflight`` (running + held delivery), ``watchdog`` (parent, deadline);
- ``handler``: one delivery from message to settled result: ``context`` (the job context and its
  ``Outcome``), ``stages`` (manifest answer, transcribe or reuse, upload, commit), ``fanout``
  (bucket notifications), ``settle`` + ``retries`` (the pure failure decision), ``announce`` (events),
  ``staging`` (temp dirs);
- ``dlq``: list and replay the dead-letter queue.
"""
