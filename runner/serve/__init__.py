"""Serving agents to other programs: over MCP (`runner mcp`). This wing imports the core and
is imported by nothing but `runner.cli`."""
