"""neuromorph: brain-inspired learning on neuromorphic and in-memory-computing hardware."""

__version__ = "0.1.0"
