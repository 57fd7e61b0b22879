"""``sdtriton perf``: a profile (``profiles``) run by one runner (``runner``) into one model of the run (``model``),
written by ``report``; timed paths in ``paths``, load generators in ``load``, ``repositories``, ``workload``."""
