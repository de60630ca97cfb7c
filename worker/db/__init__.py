"""Database access: connections, the embedded server, migrations and the named queries."""
