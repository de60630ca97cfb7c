"""The aiohttp server: ops endpoints, the HTTP API and the dashboard, on one app."""
