"""The operators' console: static files only (static/), served by proxy/api/console.py."""
