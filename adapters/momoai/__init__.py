"""MOMO AI agents (api.momoai.pro): a stateless agent API served as models and, optionally, contacts."""
