"""PostgreSQL access of the control service: connection pool and versioned schema migrations."""
