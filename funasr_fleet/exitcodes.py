"""Process exit codes shared by consumer and supervisor (the contract between them)."""

OK = 0
CRASH = 1  # anything unexpected; the supervisor restarts with backoff
BOOT_FAILURE = 3  # failed before ready (model load, settings, broker unreachable past boot timeout)
JOB_TIMEOUT = 4  # a job passed its deadline; the running model call cannot be interrupted
ORPHANED = 5  # the supervisor went away
JOB_CANCELLED = 6  # the running job was cancelled inside a model call that cannot be interrupted; replace, not a crash
CONFIG = 78  # EX_CONFIG: invalid settings (counts as a boot failure)
