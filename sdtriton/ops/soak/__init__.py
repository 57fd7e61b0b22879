"""Soak test: many mixed requests against one server, every one accounted for, and the server's memory over the run.

A seeded plan mixes request kinds (:data:`~sdtriton.ops.soak.plan.KINDS`): plain images, progress streams,
requests cancelled mid-way, requests whose time budget expires, and requests with an invalid input. Each kind has
the outcomes it may end in (:data:`~sdtriton.ops.soak.plan.ALLOWED_OUTCOMES`); a request that ends in anything
else is *unexpected*, and one that gets no answer within a generous time is *lost*. A good server has neither.

The resident memory (VmRSS) of every server process, tritonserver and each Python-backend stub, is read from
``/proc`` after a warm-up and again at the end. In restart mode tritonserver is killed (SIGKILL) part-way through
and its :class:`~sdtriton.ops.supervisor.ServerSupervisor` ends its stubs and starts it again on the same ports (as
``sdtriton serve --restart-on-crash`` does), while the clients retry under a
:class:`~sdtriton.client.RetryPolicy`: a request the client was allowed to retry must still end as its kind
allows, and those sent while the server was down are reported on their own.

The parts:

- :mod:`~sdtriton.ops.soak.plan`: the request kinds, the outcomes each may end in, and the seeded plan;
- :mod:`~sdtriton.ops.soak.memory`: the server's processes and their VmRSS;
- :mod:`~sdtriton.ops.soak.run`: the plan run on many threads, the restart, the result;
- :mod:`~sdtriton.ops.soak.report`: ``report.json`` and ``report.md``;
- :mod:`~sdtriton.ops.soak.command`: ``sdtriton soak``.
"""
