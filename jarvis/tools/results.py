"""What a tool call gives back to the model: text, whether it failed, and how long it took.

Tool output is untrusted: it is handed on as plain text, cut to JARVIS_TOOL_RESULT_MAX_CHARS
with a note saying so, and never rendered as HTML by Jarvis.
"""

from __future__ import annotations

import json

import mcp_types

from ..conversation import ToolResult

__all__ = ["ToolResult", "cut", "text_of"]


def cut(text: str, max_chars: int) -> str:
    """``text`` up to ``max_chars``, saying so when it was longer."""
    if len(text) <= max_chars:
        return text
    note = f"[cut: the result was {len(text)} characters; only the first {max_chars} are shown]"
    return f"{text[:max_chars]}\n{note}"


def text_of(result: mcp_types.CallToolResult) -> str:
    """The result's content blocks as text: text as it is, anything else named or as JSON."""
    parts = [_block_text(block) for block in result.content]
    if not parts and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content, ensure_ascii=False))
    return "\n".join(parts)


def _block_text(block: object) -> str:
    if isinstance(block, mcp_types.TextContent):
        return block.text
    if isinstance(block, mcp_types.ImageContent | mcp_types.AudioContent):
        return f"[{block.type}: {block.mime_type}, {len(block.data) * 3 // 4} bytes, not shown]"
    if isinstance(block, mcp_types.EmbeddedResource):
        text = getattr(block.resource, "text", None)
        return text if isinstance(text, str) else f"[resource {block.resource.uri}, not shown]"
    if isinstance(block, mcp_types.ResourceLink):
        return f"[resource {block.uri}]"
    return json.dumps(getattr(block, "model_dump", lambda **_: str(block))(mode="json"), ensure_ascii=False)
