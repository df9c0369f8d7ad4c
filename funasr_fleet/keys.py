"""S3 object keys under a prefix: the one place that joins ``prefix`` and names with ``/``.

Prefixes come from settings (``s3.results_prefix``) or from a job's validated output location
(``s3uri.safe_prefix``); either may be empty, which means "at the bucket's root".
"""

from __future__ import annotations


def join_key(prefix: str, *names: str) -> str:
    """``<prefix>/<name>/...``; the prefix's outer slashes are dropped and an empty prefix adds nothing.

    ``join_key("results/", "job-1", "manifest.json") == "results/job-1/manifest.json"``;
    ``join_key("", "manifest.json") == "manifest.json"``. Names are used as given (callers pass
    names they built or validated: a name with a ``/`` makes a deeper key).
    """
    head = prefix.strip("/")
    return "/".join([head, *names]) if head else "/".join(names)
