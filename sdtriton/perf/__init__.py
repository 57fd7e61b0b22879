"""``sdtriton perf``: a profile (``profiles``) run by one runner (``runner``) into one model of the run (``model``),
written by ``report``; requests in ``workload``, sent and timed by ``load``."""
