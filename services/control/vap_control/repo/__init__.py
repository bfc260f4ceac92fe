"""SQL of the control service, one module per aggregate; functions take an open connection or transaction."""
