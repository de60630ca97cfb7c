"""The operations, one module each: promote (check, promote), evaluate (the daemon's), scan, rollback, guard,
rollback_requests; deciding (read + decide, shared) and effects (payloads, outbox, and after the commit the
metrics, logs and the committed callback). worker.engine.Engine is the facade the CLI, API and daemon call."""

# Temporary, until the EngineError classes move from worker/engine.py to the domain errors module (another branch of
# issue 14): the services import them from worker.engine, which imports the services after defining them. Loading
# the facade first, whichever service is imported first, keeps that order.
import worker.engine  # noqa: F401
