"""Packaging: the repository root is the ``ovos_skill_persona_fallback`` package."""
from setuptools import setup

PACKAGE = "ovos_skill_persona_fallback"
SKILL_ID = "ovos-skill-persona-fallback.openpersona"
SUB_PACKAGES = ["solvers", "formats", "models", "tools", "memory", "server"]
# "personas/examples" is data, not a package: package_data below carries it

setup(
    name="ovos-skill-persona-fallback",
    version="0.1.0",
    description="OVOS fallback skill that answers through a persona: a chain of LLM and offline solvers",
    license="Apache-2.0",
    python_requires=">=3.9",
    packages=[PACKAGE] + [f"{PACKAGE}.{sub}" for sub in SUB_PACKAGES],
    package_dir={PACKAGE: "."} | {f"{PACKAGE}.{sub}": sub for sub in SUB_PACKAGES},
    package_data={PACKAGE: ["locale/*/*", "personas/*.yaml", "personas/examples/*.yaml", "settingsmeta.yaml"]},
    include_package_data=False,
    install_requires=[
        "ovos-workshop>=7.0.6,<8",
        "ovos-bus-client>=1.5,<2",
        "ovos-plugin-manager>=2.2,<3",
        "ovos-utils>=0.8.5,<0.9",
        "ovos-config>=1.2,<2",
        "langcodes>=3.3,<4",
        "language_data>=1.2,<2",
        "pysbd>=0.3.4,<0.4",
        "pyyaml>=6,<7",
        "rapidfuzz>=3,<4",
        "requests>=2.28,<3",
        "rivescript>=1.15,<2",
        # tool argument schemas (tools/spec.py)
        "jsonschema>=4.18,<5",
    ],
    extras_require={
        "llama": ["llama-cpp-python>=0.3.16,<0.4", "huggingface_hub>=2.0,<3"],
        # hf: model references (download into huggingface_hub's cache) and "persona-fallback models"
        "models": ["huggingface_hub>=2.0,<3"],
        # a skill never requires ovos-core (it is installed into core's environment); the demo and
        # the tests start their own core and messagebus
        "demo": ["ovos-core>=2.1.1,<2.2", "ovos-messagebus>=0.0.10,<0.1"],
        # conversation memory shared by several nodes (db_url); SQLite needs nothing extra
        "postgres": ["psycopg[binary,pool]>=3.2,<3.4"],
        # persona-fallback serve: the OpenAI/Ollama-compatible HTTP front end
        "server": ["fastapi>=0.110,<1", "uvicorn>=0.30,<1"],
        # the anchors the benchmarks compare against, pinned to the versions measured
        "bench": ["ovos-persona==0.7.1", "ovos-openai-plugin==2.0.6", "ovos-persona-server==0.4.0"],
        "test": [
            "llama-cpp-python[server]>=0.3.16,<0.4",
            "pytest>=8,<10",
            "pytest-timeout>=2.3,<3",
            "hypothesis>=6.100,<7",
            "gguf>=0.17,<0.20",
            "ovos-core>=2.1.1,<2.2",
            "huggingface_hub>=2.0,<3",
            "ovos-messagebus>=0.0.10,<0.1",
            "ovos-solver-failure-plugin>=0.0.3,<0.1",
            "psycopg[binary,pool]>=3.2,<3.4",
            # the server's tests: its own stack and the real clients that drive it
            "fastapi>=0.110,<1",
            "uvicorn>=0.30,<1",
            "httpx>=0.27,<0.29",
            "openai>=1.40,<4",
            "ollama>=0.4,<0.7",
            "schemathesis>=4,<5",
            "ovos-openai-plugin>=2.0.6,<2.1",
        ],
    },
    entry_points={
        "ovos.plugin.skill": [f"{SKILL_ID}={PACKAGE}:PersonaFallbackSkill"],
        "console_scripts": [f"persona-fallback={PACKAGE}.cli:main"],
    },
)
