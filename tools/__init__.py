"""Tools a persona can use: declared in its file, checked, run by an executor the front end injects."""
from .client import ClientToolsSolver
from .loop import ToolExecutor, ToolUsingSolver, flatten_tool_messages
from .spec import (ASSISTANT, BUS, DEFAULT_MAX_TOOL_ROUNDS, TOOLBOX, ToolError, ToolSettings, ToolSpec,
                   check_arguments, parse_tools, toolbox_specs)

__all__ = ["ASSISTANT", "BUS", "ClientToolsSolver", "DEFAULT_MAX_TOOL_ROUNDS", "TOOLBOX", "ToolError", "ToolExecutor", "ToolSettings",
           "ToolSpec", "ToolUsingSolver", "check_arguments", "flatten_tool_messages", "parse_tools", "toolbox_specs"]
