"""Beyond one process and one machine: the settings and secrets shared by every end (`settings`), the executors
and the workers' guarded step (`executor`), the heartbeat and the dead-run reaper (`heartbeat`), the services'
stack (`stack`), its restarter (`supervisor`) and the Celery app the workers run (`worker`).

This folder may import Dagster; the core beside it never does (tests/integration/test_structure.py)."""
