"""The HTTP front end: OpenAI- and Ollama-compatible routes over the same ``PersonaEngine`` as the skill."""
