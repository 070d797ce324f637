"""dmalab on LAVA: a run's results as LAVA test cases, and the LAVA jobs that run the suite.

- `results`: results.json -> LAVA test sets and cases (recorded with `lava-test-case`, or LAVA's
  results YAML outside a LAVA test shell);
- `jobs`: job definitions, one per shard on LAVA's `docker` device type and a guest-side smoke
  job on its `qemu` device type;
- `submit`: hands generated jobs to `lavacli`.

LAVA schedules, boots and keeps the results; the host-side checks and the merged report stay in
dmalab (docs/lava.md).
"""
