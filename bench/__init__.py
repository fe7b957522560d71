"""Benchmarks for tcpchat: ``python -m bench`` from a checkout.

Not part of the installed package. Stdlib only, Linux only (server CPU time
and memory are read from /proc). The pieces:

* ``bench.procs``: starting a server as a subprocess on a loopback port,
  reading its CPU time and resident memory, driving load processes.
* ``bench.loadgen``: the load generator, a process holding many client
  connections, told what to do one command line at a time.
* ``bench.scenarios``: the four scenarios of the benchmark issue.
* ``bench.report``: the table and the targets.
* ``bench.baselines``: what a user would otherwise pick, on the same work.
"""
