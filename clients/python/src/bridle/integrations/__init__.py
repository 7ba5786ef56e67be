"""Agent-framework integrations. Each module needs its framework installed (an extra)."""
