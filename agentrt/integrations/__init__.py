"""Adapters for agent frameworks: `agentrt.integrations.langchain` (LangChain / LangGraph) first.

Each needs its framework installed (`pip install 'agentrt[langchain]'`); importing this package
imports none of them."""
