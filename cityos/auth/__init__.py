"""Access control: credentials, policy, rate limits, the audit log."""
