"""The `securecloud` command: one module per command group."""
