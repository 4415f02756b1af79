"""The admin pages under /admin/: sign-in, API keys, staff accounts and the audit log."""
