"""A tiny skill for the tool tests: one intent, "set a timer for N minutes", that only speaks."""
from ovos_utils import classproperty
from ovos_utils.process_utils import RuntimeRequirements
from ovos_workshop.decorators import intent_handler
from ovos_workshop.skills import OVOSSkill


class TimerTestSkill(OVOSSkill):
    """Says it set a timer; nothing else (the persona's assistant tool must reach it)."""

    @classproperty
    def runtime_requirements(self) -> RuntimeRequirements:
        return RuntimeRequirements(internet_before_load=False, network_before_load=False,
                                   requires_internet=False, requires_network=False,
                                   no_internet_fallback=True, no_network_fallback=True)

    @intent_handler("set_timer.intent")
    def handle_set_timer(self, message):
        self.speak(f"Timer set for {message.data.get('minutes', 'some')} minutes.")
