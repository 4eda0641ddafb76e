"""Persona Fallback: the OVOS skill class (the only module that touches the messagebus)."""
from ovos_workshop.skills.fallback import FallbackSkill


class PersonaFallbackSkill(FallbackSkill):
    """Answers utterances no other skill handled by asking the session's persona."""
