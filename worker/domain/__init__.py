"""Pure domain values and rules: no database, no network, no HTTP."""
