"""Tools from MCP servers: the tool sources wing.

Owns the servers of JARVIS_MCP_CONFIG (stdio programs and streamable-HTTP endpoints), the one
event loop the MCP SDK runs in, and the bounded bridge from worker threads to it. May import only
the foundation (config, errors, log, metrics, cancel, conversation); the agent loop, the web
routes and ``jarvis check`` use it through ``ToolBox``.
"""

from .box import ToolBox
from .results import ToolResult

__all__ = ["ToolBox", "ToolResult"]
