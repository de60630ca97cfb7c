"""The operations, one module each: promote (check, promote), evaluate (the daemon's), scan, rollback, guard,
rollback_requests; deciding (read + decide, shared) and effects (payloads, outbox, and after the commit the
metrics, logs and the committed callback). worker.engine.Engine is the facade the CLI, API and daemon call."""
