"""``sdtriton perf``: ``profiles`` run by ``runner`` into ``model`` and ``report``; requests sent by ``load``."""
