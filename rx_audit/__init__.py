"""rx_audit — prescription audit (处方前置审核) on durable_rules."""
