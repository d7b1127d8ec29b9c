"""Private expression recognition (DE-Capsnet §3.3-3.7): a server's linear classifier applied
to a client's face without either side seeing the other's data. See docs/privacy.md."""
